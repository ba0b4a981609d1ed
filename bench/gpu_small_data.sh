#!/usr/bin/env bash
# The small-data campaign of docs/results.md at its full size (the paper configs' heads at 400 px),
# for a machine with a GPU: FCOS, ATSS and RetinaNet from scratch on the tree crowns, 3 seeds, the
# settings before and after the stability work, then each aid alone on 2 seeds (clipping, the bias
# lr on top of "before"; the EMA, augmentation on top of the default). Four runs share
# the GPU at a time; finished runs are skipped when it is started again.
#
#   bash bench/gpu_small_data.sh [OUT_DIR]         # default work_dirs/small_data_gpu
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-work_dirs/small_data_gpu}/runs.jsonl"
py="${PYTHON:-python}"
"$py" bench/small_data.py --data crowns --variants default before --seeds 1 2 3 --jobs 4 --threads 4 --out "$out"
"$py" bench/small_data.py --data crowns --variants before_clip before_bias ema aug --seeds 1 2 --jobs 4 --threads 4 --out "$out"
"$py" bench/small_data.py --table "$out"
