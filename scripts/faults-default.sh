#!/usr/bin/env bash
# All four faults of the exercise at once (the `default` profile), optionally with a seed.
# Usage: scripts/faults-default.sh [seed]
source "$(dirname "$0")/lib.sh"
say "default fault profile on every process ${1:+(seed $1)}"
fault set --profile default ${1:+--seed "$1"}
