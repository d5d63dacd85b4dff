# Sourced by the scripts: find uv (or install it into .tools/), then sync the locked environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if command -v uv >/dev/null 2>&1; then
  UV="$(command -v uv)"
elif [ -x "$ROOT/.tools/bin/uv" ]; then
  UV="$ROOT/.tools/bin/uv"
else
  echo "installing uv into .tools/ ..." >&2
  python3 -m venv "$ROOT/.tools"
  "$ROOT/.tools/bin/pip" install --quiet --disable-pip-version-check uv
  UV="$ROOT/.tools/bin/uv"
fi
export UV
# Bytecode compiled once, here: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
# xbusd or client process the tests start would otherwise compile its imports again (~7 s
# instead of ~2 s per process on 2 cores).
"$UV" sync --frozen --quiet --compile-bytecode
"$ROOT/.venv/bin/python" -m compileall -q app bench tests >/dev/null
