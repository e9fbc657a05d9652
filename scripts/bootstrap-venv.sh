#!/usr/bin/env bash
# Create (once) the repo-local Python virtualenv `.venv` with the test tools from
# requirements-test.txt (moto_server, numpy, onnxruntime, pillow). Idempotent: packages are
# (re)installed only when requirements-test.txt changed since the last successful install.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

venv="$repo/.venv"
req="$repo/requirements-test.txt"
stamp="$venv/.requirements-test.sha256"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
    echo "bootstrap-venv: creating $venv" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >/dev/null 2>&1 || [ ! -x "$venv/bin/pip" ]; then
        # Debian/Ubuntu's python3 without python3-venv has no ensurepip: use virtualenv instead.
        echo "bootstrap-venv: 'python3 -m venv' failed; falling back to virtualenv" >&2
        rm -rf "$venv"
        "$python" -m pip install -q --user virtualenv 2>/dev/null \
            || "$python" -m pip install -q --user --break-system-packages virtualenv
        "$python" -m virtualenv -q "$venv"
    fi
fi

want="$( (sha256sum "$req" 2>/dev/null || shasum -a 256 "$req") | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    echo "bootstrap-venv: installing $(basename "$req") into .venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi
