#!/usr/bin/env bash
# Fault 1 of the exercise: Store GET /product never answers, probability 0.2 per request.
# Usage: scripts/fault-product-omission.sh [probability] [ttl]
source "$(dirname "$0")/lib.sh"
P="${1:-0.2}"; TTL="${2:-10m}"
say "store GET /product: omission p=$P (rule removes itself after $TTL)"
fault set --service store --route /product --method GET --kind omission --probability "$P" --ttl "$TTL"
