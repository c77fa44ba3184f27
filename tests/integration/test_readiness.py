"""/readyz: ready only when the policy in force decides (a probe decision, against the remote OPA
too) and the upstream accepts connections; a 503 names the check that failed."""

from __future__ import annotations

import asyncio
import time

import httpx
from aiohttp import web

from proxy.app import create_app
from proxy.config import BUNDLED_POLICIES, load
from proxy.policy.opa import PROBE_TTL_S, OpaEngine
from tests.integration.test_policy_runtime import start_opa
from tests.peers.harness import eventually, free_port, start_server


async def _ready(http: httpx.AsyncClient, base: str) -> httpx.Response:
    return await http.get(f"{base}/readyz", timeout=5)


async def test_remote_opa_down_slow_garbage_is_not_ready_and_back_is(sdk_upstream, proxy_for, tmp_path):
    opa_url, opa = start_opa(tmp_path)
    opa_port = int(opa_url.rsplit(":", 1)[1])
    upstream = sdk_upstream("stateless-json")
    proxy = proxy_for(upstream.base, {"policy": {"engine": "opa", "opa": {"url": opa_url, "timeout_ms": 300}}})
    try:
        async with httpx.AsyncClient() as http:
            assert (await _ready(http, proxy.base)).json() == {"status": "ready"}

            opa.stop()  # OPA down
            async def unavailable() -> bool:
                r = await _ready(http, proxy.base)
                return r.status_code == 503 and r.json()["reason"].startswith("policy engine unavailable")
            assert await eventually(unavailable, timeout=5)
            down = await _ready(http, proxy.base)
            assert down.json() == {"status": "unavailable",
                                   "reason": "policy engine unavailable: OPA is unreachable (ClientConnectorError)"}
            assert "127.0.0.1" not in down.text and "upstream-credential" not in down.text  # no URL, no secret
            assert (await http.get(f"{proxy.base}/healthz")).status_code == 200  # alive all the same

            opa = start_server(["tests.peers.opa_standin", "--port", str(opa_port), "--policies",
                                BUNDLED_POLICIES], opa_port, log_dir=tmp_path)  # back
            async def ready() -> bool:
                return (await _ready(http, proxy.base)).status_code == 200
            assert await eventually(ready, timeout=5)

            for mode, why in (("slow", "OPA did not answer within 300 ms"),
                              ("garbage", "OPA answered with a body that is not JSON"),
                              ("undefined", "OPA has no result for the query (undefined)")):
                await http.put(f"{opa_url}/standin/mode", content=mode)
                async def failing(why: str = why) -> bool:
                    r = await _ready(http, proxy.base)
                    return r.status_code == 503 and r.json()["reason"] == f"policy engine unavailable: {why}"
                started = time.monotonic()
                assert await eventually(failing, timeout=5), mode
                assert time.monotonic() - started < 3  # the probe's own budget, plus the cache's second
            await http.put(f"{opa_url}/standin/mode", content="ok")
            assert await eventually(ready, timeout=5)
    finally:
        opa.stop()


async def test_both_checks_failing_are_both_named(proxy_for):
    dead_opa = f"http://127.0.0.1:{free_port()}"
    proxy = proxy_for(f"http://127.0.0.1:{free_port()}", {"policy": {"engine": "opa", "opa": {"url": dead_opa}}})
    async with httpx.AsyncClient() as http:
        r = await _ready(http, proxy.base)
    assert r.status_code == 503
    assert r.json()["reason"] == ("policy engine unavailable: OPA is unreachable (ClientConnectorError); "
                                  "upstream unreachable")


async def test_embedded_engine_is_ready_with_an_upstream_listening(sdk_upstream):
    upstream = sdk_upstream("stateless-json")
    app = create_app(load(None, {"upstream.url": f"{upstream.base}/mcp"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        r = await http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    assert app.policy_manager is not None
    assert await app.policy_manager.readiness() is None


async def test_opa_probes_are_cached_and_shared():
    """A burst of probes costs OPA one query; the next second, one more."""
    queries = 0

    async def data(request: web.Request) -> web.Response:
        nonlocal queries
        queries += 1
        await asyncio.sleep(0.05)
        return web.json_response({"result": {"allow": False, "reasons": [], "visible_tools": []}})

    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", data)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    engine = OpaEngine(f"http://127.0.0.1:{port}", timeout_ms=500)
    try:
        await asyncio.gather(*(engine.probe() for _ in range(20)))
        await engine.probe()
        assert queries == 1
        await asyncio.sleep(PROBE_TTL_S + 0.05)
        await asyncio.gather(*(engine.probe() for _ in range(5)))
        assert queries == 2
    finally:
        await engine.close()
        await runner.cleanup()
