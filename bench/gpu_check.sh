#!/usr/bin/env bash
# Every GPU task once at full size on a CUDA host, through a real worker and directly, in fp16 and
# bf16: overhead, warm load time, peak VRAM (see bench/gpu_check.py for what and how).
#
#   bench/gpu_check.sh                          # CUDA host; real weights where pulled, else random
#   bench/gpu_check.sh --real-dir ~/ckpts       # ~/ckpts/<registry name>/ hold real checkpoints
#   bench/gpu_check.sh --tiny --device cpu      # the same path on the tiny models, anywhere
#
# Starts its own redis-server and SeaweedFS unless REDIS_URL / S3_ENDPOINT are set. The whole
# check aims at 8 minutes; GPU_CHECK_TIMEOUT_S (900) is the hard stop.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec timeout --foreground --kill-after=30 "${GPU_CHECK_TIMEOUT_S:-900}" "$python" bench/gpu_check.py "$@"
