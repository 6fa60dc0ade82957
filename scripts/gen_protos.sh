#!/usr/bin/env sh
# Regenerate seqguard_ray/proto/ from protos/ (needs grpcio-tools: pip install -e .[dev]).
set -e
cd "$(dirname "$0")/.."
exec python -m seqguard_ray.protos_gen "$@"
