#!/usr/bin/env bash
# The proxy on http://127.0.0.1:8080/mcp (and /sse) in front of an example MCP server (the official
# Python SDK, started here on 127.0.0.1:3000). Ctrl-C stops both.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
"$VENV/bin/python" -m tests.peers.sdk_server --mode stateful-sse --port 3000 &
upstream=$!
trap 'kill $upstream 2>/dev/null' EXIT
"$VENV/bin/mcp-policy-proxy" serve --upstream http://127.0.0.1:3000/mcp --port 8080
