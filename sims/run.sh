#!/usr/bin/env bash
# Simulate stage. Usage: sims/run.sh [PRESET] [extra `deepcmb simulate` options]
#   PRESET: a YAML file name in sims/ without .yaml (default: quick)
#   Output: $OUT, default data/out/sims_<PRESET>.h5
# Example: sims/run.sh paper --workers 16
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
preset=${1:-quick}
[ $# -gt 0 ] && shift
out=${OUT:-$here/../data/out/sims_$preset.h5}
mkdir -p "$(dirname "$out")"
exec deepcmb simulate --config "$here/$preset.yaml" --out "$out" "$@"
