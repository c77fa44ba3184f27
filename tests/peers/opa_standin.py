"""A STAND-IN for an OPA server, for tests only. It is not OPA.

No OPA binary can be installed where these tests run, so the remote engine (proxy/policy/opa.py) is
tested against this small HTTP server, which speaks the part of OPA's REST API the proxy uses:

- `POST /v1/data/{path}` with `{"input": …}` → 200 `{"result": <value>, "decision_id": "<uuid>"}`,
  or 200 without `result` when the document is undefined (as OPA does); `?provenance=true` adds a
  `provenance` object (with `bundles: {"standin": {"revision": …}}` when `--bundle-revision` is
  given, as OPA does for bundles); an evaluation error → 500 `{"code": "internal_error", …}`; a body
  that is not a JSON object → 400 `{"code": "invalid_parameter", …}`.
- `GET /health` → 200 `{}`.

Decisions come from regorus (the embedded engine's interpreter), not from OPA's Go engine, over every
`.rego` file and bundle-style data file under `--policies DIR` (`DIR/a/b/data.json` or `data.yaml`
→ `data.a.b`). So it checks the proxy's client side of the protocol (URL, body, status codes,
timeouts, connection reuse), not OPA's Rego semantics.

`--mode` simulates faults: `ok` (default), `slow` (sleeps 2 s, then answers), `garbage` (200 with a
JSON content type over a body that is not JSON), `error500`, `undefined` (200 `{}`). A test switches
the mode of a running stand-in with `PUT /standin/mode` (body: the mode's name; not OPA's API), which
spares it a restart per mode.

    python -m tests.peers.opa_standin --port 8181 --policies policies/ [--mode ok]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

os.environ["RUST_BACKTRACE"] = "0"  # regorus errors would otherwise carry (and compute) a backtrace

import regorus
from aiohttp import web

from proxy.policy.loader import load_bundle

MODES = ("ok", "slow", "garbage", "error500", "undefined")
SLOW_S = 2.0


def load_engine(root: Path) -> regorus.Engine:
    """The bundle below `root` (read as the proxy reads it; test files excluded, as OPA serves
    bundles) in one regorus Engine."""
    bundle = load_bundle([str(root)])
    engine = regorus.Engine()
    for path, source in bundle.modules:
        engine.add_policy(path, source)
    engine.add_data(bundle.data)
    return engine


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(value).encode(), content_type="application/json")


def _truthy(request: web.Request, name: str) -> bool:
    return name in request.query and request.query[name].lower() in ("", "true")


def make_app(policies: Path, mode: str = "ok", bundle_revision: str | None = None) -> web.Application:
    base = load_engine(policies)  # never given an input: cloned for requests without one
    engine = base.clone()
    state = {"mode": mode}

    async def set_mode(request: web.Request) -> web.Response:
        wanted = (await request.text()).strip()
        if wanted not in MODES:
            return _json({"code": "invalid_parameter", "message": f"mode must be one of {MODES}"}, 400)
        state["mode"] = wanted
        return _json({"mode": wanted})

    async def health(request: web.Request) -> web.Response:
        return _json({})

    async def data(request: web.Request) -> web.Response:
        mode = state["mode"]
        if mode == "slow":
            await asyncio.sleep(SLOW_S)
        elif mode == "garbage":
            return web.Response(body=b"<html>this is not JSON", content_type="application/json")
        elif mode == "error500":
            return _json({"code": "internal_error", "message": "simulated failure"}, 500)
        elif mode == "undefined":
            return _json({})
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            return _json({"code": "invalid_parameter", "message": f"body is not JSON: {exc}"}, 400)
        if not isinstance(body, dict):
            return _json({"code": "invalid_parameter", "message": "body must be a JSON object"}, 400)
        segments = [s for s in request.match_info.get("path", "").split("/") if s]
        query = "data" + "".join(f"[{json.dumps(s)}]" for s in segments)
        answer: dict[str, Any] = {"decision_id": str(uuid.uuid4())}
        try:
            # as JSON, as OPA answers: regorus' Python values would turn Rego sets into Python sets
            if "input" in body:
                engine.set_input(body["input"])
                rows = json.loads(engine.eval_query_as_json(query))["result"]
            else:
                answer["warning"] = {"code": "api_usage_warning", "message": "'input' key missing from the request"}
                rows = json.loads(base.clone().eval_query_as_json(query))["result"]
        except Exception as exc:
            message = str(exc).split("\n\nStack backtrace")[0].strip()
            return _json({"code": "internal_error", "message": message}, 500)
        if rows:
            answer["result"] = rows[0]["expressions"][0]["value"]
        if _truthy(request, "provenance"):
            provenance: dict[str, Any] = {"version": "opa-standin", "build_commit": "", "build_timestamp": "",
                                          "build_hostname": ""}
            if bundle_revision is not None:
                provenance["bundles"] = {"standin": {"revision": bundle_revision}}
            answer["provenance"] = provenance
        return _json(answer)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_put("/standin/mode", set_mode)
    app.router.add_post("/v1/data", data)
    app.router.add_post("/v1/data/{path:.*}", data)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for OPA's Data API (tests only; not OPA).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--policies", type=Path, required=True, help="directory of .rego and data files")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--bundle-revision", help="report this revision in provenance, as a bundle would")
    args = parser.parse_args(argv)
    app = make_app(args.policies, args.mode, args.bundle_revision)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
