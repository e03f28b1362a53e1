# Sourced by the scripts: create .venv with exactly the versions of requirements/lock.txt (hashes
# checked) and the project itself, editable; again whenever pyproject.toml or the lock changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
LOCK="$ROOT/requirements/lock.txt"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: $PY is not Python 3.11 or newer; install one and name it: PYTHON=python3.11 $0" >&2
  exit 1
fi
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$LOCK" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "Setting up $VENV from requirements/lock.txt (again whenever it or pyproject.toml changes)..." >&2
  # --clear: the venv holds the lock and nothing left over from an older one.
  "$PY" -m venv --clear "$VENV"
  pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
  "${pip[@]}" install --require-hashes -r "$LOCK" >&2
  # The lock holds the build backend too, so building the project fetches nothing unpinned.
  "${pip[@]}" install --no-deps --no-build-isolation -e "$ROOT" >&2
  touch "$stamp"
fi
cd "$ROOT"
