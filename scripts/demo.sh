#!/usr/bin/env bash
# The demo: the proxy (embedded policy engine) in front of a demo Missive MCP server with in-memory
# data, three example servers with URL tokens; each policy decision is printed as one line.
# Ctrl-C stops everything. Needs Python only: no Node.js, no npm (those are test peers).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
exec "$VENV/bin/mcp-policy-proxy" demo "$@"
