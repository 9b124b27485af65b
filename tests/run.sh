#!/usr/bin/env bash
# The project's test command (README "Running the tests"); CI runs exactly this via .ci/run.
# On a fresh machine it creates .venv, installs requirements-dev.txt (CPU torch), installs what the
# browser tests need (Debian's chromium, npm playwright-core), then runs the whole pytest suite.
# Extra arguments go to pytest. pytest's "no tests collected" (exit 5) fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "tests/run.sh: /usr/bin/chromium is missing; install Debian's 'chromium' package (needs root)" >&2
  fi
fi
if [ -f tests/browser/package-lock.json ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi

exec .venv/bin/python -m pytest -q "$@"
