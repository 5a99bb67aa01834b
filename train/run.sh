#!/usr/bin/env bash
# Training stage. Usage: train/run.sh [PRESET] [extra `deepcmb train` options]
#   PRESET: a YAML file name in train/ without .yaml (default: quick)
#   Data:   $DATA, default data/out/sims_<PRESET>.h5 (made by sims/run.sh PRESET)
#   QE:     $QE, a QE reconstruction of $DATA, for a preset whose network reads kappa_qe (quick does:
#           deepcmb reconstruct --method qe --estimator MV_POL --sims $DATA --out $QE)
#   Output: $OUT, default data/out/train_<PRESET>/ (re-run the same command to resume it)
#   Backend: $KERAS_BACKEND (tensorflow by default; jax or torch on GPU machines)
# Example: KERAS_BACKEND=jax train/run.sh paper
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
preset=${1:-quick}
[ $# -gt 0 ] && shift
data=${DATA:-$here/../data/out/sims_$preset.h5}
out=${OUT:-$here/../data/out/train_$preset}
mkdir -p "$(dirname "$out")"
qe=()
[ -n "${QE:-}" ] && qe=(--qe "$QE")
exec deepcmb train --config "$here/$preset.yaml" --sims "$data" --out "$out" "${qe[@]}" "$@"
