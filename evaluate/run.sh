#!/usr/bin/env bash
# The whole pipeline of a preset: simulate -> train -> reconstruct (nn, qe) -> evaluate -> params -> figures.
# Usage: evaluate/run.sh [PRESET] [extra `deepcmb run` options]
#   PRESET: a YAML file name in evaluate/ without .yaml (default: quick); it names the sims/ and train/
#           presets it uses (section run:)
#   Output: $OUT, default data/out/run_<PRESET>/ (finished stages are re-used on re-run)
# The evaluation alone, on existing reconstructions:
#   deepcmb evaluate --config evaluate/quick.yaml --sims SIMS.h5 --rec nn=REC_NN.h5 --rec qe_eb=REC_QE.h5 --out EVAL_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
preset=${1:-quick}
[ $# -gt 0 ] && shift
out=${OUT:-$here/../data/out/run_$preset}
exec deepcmb run --preset "$preset" --root "$here/.." --out "$out" "$@"
