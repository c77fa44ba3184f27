#!/usr/bin/env bash
# The whole test suite: lint, types, then unit and integration tests against real MCP peers.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check proxy tests benchmarks
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest -q "$@"
