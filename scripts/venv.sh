#!/usr/bin/env bash
# Creates .venv with the project, its test dependencies and the `deploy` extra (the Grafana SDK
# of deploy/grafana/dashboard.py, which a test runs), reinstalled when pyproject.toml
# changes. Sourced by the other scripts; sets VENV. With NODE_PEERS=1 (scripts/test.sh sets it)
# it also installs the npm test peers in tests/peers/node: only the tests need Node.js and npm,
# the proxy and its demo do not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test,deploy]"
  # The real OPA Go engine, for the conformance tests; its metadata asks for Python >= 3.14 but it
  # loads on 3.11. Optional: without it those tests are skipped, loudly.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --ignore-requires-python \
    opa-golib-python-bindings==0.4.4 || echo "warning: opa-golib-python-bindings not installed" >&2
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

if [ "${NODE_PEERS:-0}" = 1 ]; then
  node_peers="$ROOT/tests/peers/node"
  node_stamp="$node_peers/node_modules/.installed-$(sha256sum "$node_peers/package-lock.json" | cut -c1-16)"
  if [ ! -f "$node_stamp" ]; then
    command -v npm >/dev/null || { echo "npm is required for the TypeScript test peers (apt-get install nodejs npm)" >&2; exit 1; }
    npm ci --prefix "$node_peers" --no-audit --no-fund --loglevel=error
    touch "$node_stamp"
  fi
fi
