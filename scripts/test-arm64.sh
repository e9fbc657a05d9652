#!/usr/bin/env bash
# The arm64 artifacts that SAM deploys, tested without arm64 hardware: build the functions with
# `cargo lambda build --release --arm64`, run the end-to-end test (tests/e2e_lambda.rs) with
# those bootstrap binaries under qemu user-mode emulation, and check that their query answers
# match the x86-64 build's (same keys in the same order, scores within 1e-4).
#
# Needs, once: `rustup target add aarch64-unknown-linux-gnu` and the Debian packages
# qemu-user-static and libc6-arm64-cross (installed here when run as root with apt-get).
# Slow on a small machine: the release build for aarch64 compiles every dependency.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/cpu-baseline.sh
. scripts/cpu-baseline.sh
bash scripts/bootstrap-venv.sh
export PATH="$repo/.venv/bin:$PATH"
export LOOKALIKE_MOTO_SERVER="$repo/.venv/bin/moto_server" LOOKALIKE_REQUIRE_MOTO=1 LOOKALIKE_REQUIRE_E2E=1
target="${CARGO_TARGET_DIR:-target}"

rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu
if ! command -v qemu-aarch64-static >/dev/null || [ ! -d /usr/aarch64-linux-gnu ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q qemu-user-static libc6-arm64-cross
    else
        echo "install qemu-user-static and libc6-arm64-cross (Debian packages) first" >&2
        exit 2
    fi
fi

cargo lambda build --release --arm64 -p lookalike-ingest -p lookalike-query -p lookalike-compact
file "$target/lambda/lookalike-query/bootstrap" | grep -q aarch64

# The model and the x86-64 binaries (debug build, as the test suite uses).
cargo test --workspace --no-run
if [ ! -f .lookalike/model/encoder.onnx ]; then
    "$target/debug/lookalike" model import efficientnet-lite0 --out .lookalike/model
fi

mkdir -p "$target/e2e"
LOOKALIKE_E2E_RESULTS="$repo/$target/e2e/x86_64.json" \
    cargo test --workspace --test e2e_lambda -- --exact upload_ingest_event_then_query_events_find_the_image
LOOKALIKE_E2E_BIN_DIR="$repo/$target/lambda" \
LOOKALIKE_E2E_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu" \
LOOKALIKE_E2E_RESULTS="$repo/$target/e2e/arm64.json" \
    cargo test --workspace --test e2e_lambda -- --exact upload_ingest_event_then_query_events_find_the_image

python3 - "$target/e2e/x86_64.json" "$target/e2e/arm64.json" <<'PY'
import json, sys
x86, arm = (json.load(open(p)) for p in sys.argv[1:3])
worst = 0.0
for query in x86:
    a, b = x86[query], arm[query]
    assert [r["key"] for r in a] == [r["key"] for r in b], (query, a, b)
    for ra, rb in zip(a, b):
        worst = max(worst, abs(ra["score"] - rb["score"]))
print(f"arm64 vs x86-64: same results for {len(x86)} queries, largest score difference {worst:.2e}")
assert worst <= 1e-4, worst
PY
