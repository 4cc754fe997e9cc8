# Sourced by scripts/test.sh and scripts/run.sh: makes sure the virtual environment exists and has
# redisgate installed (editable) with the given extras, then sets $PY to its python.
#   REDISGATE_EXTRAS="[test]" . scripts/venv.sh
# A stock Debian 12 / Ubuntu 24.04 python3 refuses `pip install` outside a virtual environment
# (externally-managed-environment), hence the venv: `.venv/` in the checkout, or $REDISGATE_VENV.
# $PYTHON picks the interpreter the venv is made from (default: python3); a venv made from another
# Python version is made again.
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {   # apt_install PKG...: only what is missing, quietly
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "!! not a Debian/Ubuntu machine: install ${missing[*]} yourself" >&2
    return 1
  fi
  echo "== installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

BASE_PY="${PYTHON:-python3}"
VENV="${REDISGATE_VENV:-$PWD/.venv}"
base_version="$("$BASE_PY" -c 'import sys; print(sys.version)')"
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" != "$base_version" ]; then
  echo "== $VENV was made from another Python; making it again"
  rm -rf "$VENV"
elif [ -e "$VENV" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "== $VENV is incomplete (no pip: an earlier attempt without python3-venv?); making it again"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating the virtual environment $VENV ($BASE_PY)"
  if ! "$BASE_PY" -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv's ensurepip separately: python3-venv (python3.X-venv on some releases).
    rm -rf "$VENV"
    ver="$("$BASE_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install python3-venv || true
    apt-cache show "python$ver-venv" >/dev/null 2>&1 && apt_install "python$ver-venv" || true
    "$BASE_PY" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"

# The optional C modules need a C compiler and the Python headers. Debian's python3 has its headers
# in python3-dev; an interpreter built elsewhere (pyenv, a container's /usr/local) has its own.
if ! command -v gcc >/dev/null || [ ! -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  if [ "$("$BASE_PY" -c 'import sys; print(sys.prefix)')" = /usr ]; then
    apt_install gcc python3-dev || true
  else
    apt_install gcc || true
  fi
fi
# redisgate/_native/_tlsrec.c (TLS records in C) links the libssl Python's ssl module uses: its headers.
[ -f /usr/include/openssl/ssl.h ] || apt_install libssl-dev || true

# pip runs again only when what it installs changed (the dependencies, or the C sources: then the
# modules are compiled again), other extras are asked for, or a compiled module went missing.
stamp="$VENV/.redisgate-installed"   # "<hash of the inputs> <extras>"
want_hash="$(cat pyproject.toml setup.py redisgate/_native/*.c redisgate/_native/*.h | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "${have%% *}" != "$want_hash" ] \
   || { [ -n "${REDISGATE_EXTRAS:-}" ] && [ "${have#* }" != "${REDISGATE_EXTRAS:-}" ]; } \
   || ! ls redisgate/_native/_speedups.*.so redisgate/_native/_lane.*.so >/dev/null 2>&1; then
  echo "== installing redisgate${REDISGATE_EXTRAS:-} into $VENV (pip)"
  rm -f "$stamp"
  "$PY" -m pip install -q --disable-pip-version-check -e ".${REDISGATE_EXTRAS:-}"
  echo "$want_hash ${REDISGATE_EXTRAS:-}" > "$stamp"
fi
