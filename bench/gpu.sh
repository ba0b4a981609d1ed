#!/usr/bin/env bash
# The GPU check: every speed figure of densedet against torchvision in one run, under 10 minutes
# on one H100 / H200 (training images/s, peak memory, host syncs per step, loader images/s,
# decoder ms, inference images/s). Writes one markdown file and prints it; progress on stderr.
# Before it, the GPU tests of tests/test_device_plan.py (a failure stops the script).
#
#   bash bench/gpu.sh                     # GPU: ResNet-50, 800x1333, batch 8 -> bench/gpu_results.md
#   bash bench/gpu.sh --out /tmp/r.md     # the results elsewhere (or GPU_CHECK_OUT=/tmp/r.md)
#   bash bench/gpu.sh --tiny              # CPU smoke run, ResNet-18, 128x128, batch 2 (or GPU_CHECK_TINY=1)
#   PYTHON=/path/to/python bash bench/gpu.sh
#
# Columns and options: bench/gpu_check.py (python bench/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# First the GPU-only decisions taking effect in a real step (float16 loss scaling, SyncBatchNorm
# under DDP, pinned batches): tests/test_device_plan.py, whose GPU tests skip on a CPU.
# Not in the CPU smoke run (--tiny), where they would only skip.
if [[ " $* " != *" --tiny "* && -z "${GPU_CHECK_TINY:-}" ]]; then
  "${PYTHON:-python}" -m pytest -q -n 0 -p no:cacheprovider tests/test_device_plan.py >&2
fi
exec "${PYTHON:-python}" bench/gpu_check.py "$@"
