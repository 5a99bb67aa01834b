#!/usr/bin/env bash
# The headline benchmark: the network against the quadratic estimators and the iterative limit, on the main
# test maps and the robustness sets, then the results table, which it copies to docs/results/PRESET.rst
# (docs/benchmark.rst includes docs/results/bench.rst).
# Usage: evaluate/bench.sh [PRESET] [extra `deepcmb run` options]
#   PRESET: bench (default; 64 x 64 maps, trains on 2 CPU cores) or paper (128 x 128, the DeepCMB network: GPU)
#   Output: $OUT, default data/out/run_<PRESET>/: sims and reconstructions (HDF5), eval/summary.json,
#           robust_<set>/eval/summary.json, figures/, results/results.{json,rst}; and docs/results/PRESET.rst
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
preset=${1:-bench}
[ $# -gt 0 ] && shift
out=${OUT:-$here/../data/out/run_$preset}
OUT=$out "$here/run.sh" "$preset" "$@"
cat "$out/results/results.rst"
cp "$out/results/results.rst" "$here/../docs/results/$preset.rst"
echo "copied to docs/results/$preset.rst"
