#!/usr/bin/env bash
# Run the proxy from a fresh checkout, on a stock Debian/Ubuntu machine:
#   bash scripts/run.sh                 # = redisgate demo (embedded Redis, sample users)
#   bash scripts/run.sh serve -c FILE   # any other redisgate command line
# It makes (once) and uses the virtual environment .venv/ in the checkout, with redisgate installed
# in it (this compiles the optional C modules with the machine's gcc); see scripts/venv.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REDISGATE_EXTRAS="" . scripts/venv.sh
[ $# -gt 0 ] || set -- demo
exec "$VENV/bin/redisgate" "$@"
