#!/usr/bin/env bash
# GPU smoke test of the encoder (issue 31): trains the base preset's encoder shape for a few hundred
# steps with mixed precision and times scoring, against the same on the CPU. Needs only python3 with
# torch (transformers optional); no Ray, no seqguard install. Exits 2 with a message where no CUDA
# GPU exists. Arguments go to bench/gpu_smoke.py (--help).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "gpu_smoke: $py cannot import torch: install torch (a CUDA build) first" >&2
  exit 2
fi
exec "$py" "$here/gpu_smoke.py" "$@"
