#!/usr/bin/env bash
# The whole test suite: lint, types, then unit and integration tests against real MCP peers
# (the npm test peers included: NODE_PEERS=1 makes venv.sh install them).
set -euo pipefail
NODE_PEERS=1
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check proxy tests benchmarks deploy
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest -q "$@"
