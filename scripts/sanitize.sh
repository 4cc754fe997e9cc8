#!/usr/bin/env bash
# The C modules (redisgate/_native/_speedups.c, redisgate/_native/_lane.c) under AddressSanitizer and
# UndefinedBehaviorSanitizer, running the suites that drive them:
#   bash scripts/sanitize.sh                 # the lane, fast-path, parser and mux suites
#   bash scripts/sanitize.sh tests/test_lane.py -k shared    # or any pytest arguments
#
# It copies the package and the tests to a temporary directory, builds the extensions there in
# place with -fsanitize=address,undefined -fno-omit-frame-pointer (the checkout's own build is
# left alone), and runs pytest with PYTHONPATH pointing at the copy, so the sanitized .so files
# are the ones imported (the script checks that they are). Python itself is not built with ASan,
# hence LD_PRELOAD of gcc's libasan and detect_leaks=0 (the interpreter leaks by design at exit).
# Any ASan report, or any UBSan report (halt_on_error=1), fails the run.
#
# $PY picks the interpreter (default: the venv's python when scripts/test.sh made one, else
# python3); it needs the test extras (pytest, hypothesis, redis) and gcc with libasan.
# SANITIZE_KEEP=1 keeps the temporary directory (its path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

if [ -z "${PY:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PY="$root/.venv/bin/python"; else PY=python3; fi
fi
libasan="$(gcc -print-file-name=libasan.so 2>/dev/null || true)"
if [ -z "$libasan" ] || [ ! -e "$libasan" ] || [ "$libasan" = libasan.so ]; then
  echo "!! gcc's libasan.so was not found: no sanitizer run" >&2
  exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/redisgate-sanitize.XXXXXX")"
if [ -z "${SANITIZE_KEEP:-}" ]; then trap 'rm -rf "$tmp"' EXIT; else echo "== keeping $tmp"; fi

# The package (no compiled modules: they are built again), the tests, the build script.
mkdir -p "$tmp/src"
cp -r redisgate tests setup.py pyproject.toml README.md "$tmp/src/"
[ -f MANIFEST.in ] && cp MANIFEST.in "$tmp/src/"
find "$tmp/src" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +

echo "== building the C modules with ASan + UBSan in $tmp/src"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g"
( cd "$tmp/src" && CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
    "$PY" setup.py -q build_ext --inplace --build-temp "$tmp/build" >"$tmp/build.log" 2>&1 ) || {
  cat "$tmp/build.log" >&2
  echo "!! the sanitized build failed" >&2
  exit 1
}

export PYTHONPATH="$tmp/src${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$libasan${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONMALLOC=malloc   # (pymalloc's arenas would hide overruns of Python objects from ASan)

# The sanitized modules must be the ones imported, not the checkout's or an installed copy.
cd "$tmp/src"
"$PY" - "$tmp/src" <<'EOF'
import sys
import redisgate._native._lane as lane, redisgate._native._speedups as speedups
for m in (lane, speedups):
    assert m.__file__.startswith(sys.argv[1] + "/"), f"{m.__name__} came from {m.__file__}"
    print(f"   {m.__name__}: {m.__file__}")
EOF

if [ $# -eq 0 ]; then
  set -- tests/test_lane.py tests/test_lane_replies.py tests/test_resp_scan.py \
         tests/test_resp_count_flat.py tests/test_rules_fast.py tests/test_scripts_fast.py \
         tests/test_session_fast.py tests/test_resp.py tests/test_resp_fuzz.py \
         tests/test_mux.py tests/test_c_refcounts.py tests/test_verdict.py tests/test_linkstate.py
fi
echo "== running under ASan + UBSan: $*"
"$PY" -m pytest -q -p no:cacheprovider "$@"
