#!/usr/bin/env bash
# Every fault off, on every process.
source "$(dirname "$0")/lib.sh"
say "faults off"
fault clear
