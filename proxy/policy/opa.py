"""The remote engine: a decision query sent to an OPA server's Data API.

`OpaEngine(url, query, timeout_ms)` POSTs `{"input": …}` to `{url}/v1/data/<query path>` and returns
the `result` of OPA's answer. Anything else fails closed with PolicyError: nothing listening,
`timeout_ms` spent (the whole call, connecting included), a status other than 200 (redirects are
not followed), a body that is not a JSON object, or an answer without `result` (the query is
undefined for that input).

Why aiohttp directly and not `opa_client.AsyncOpaClient` (opa-python-client 3.0.0, as DESIGN.md §6
suggests): its source shows it can keep one session (made by `__aenter__`) for every call, but

- `query_rule` follows redirects and passes no request options through: a 301/302 in front of OPA
  (an ingress sending http to https) turns the POST into a GET *without the input*, and OPA's
  answer for an absent input is returned as the decision. A policy such as
  `allow if count(violations) == 0` then allows. This was reproduced against the client: fail open.
- it has no per-call timeout (only one for the whole client), retries connection errors and
  500/502/504 after sleeping 0.3 s and 0.6 s (`retries=0` turns that off), and calls
  `raise_for_status`, so a 2xx other than 200 cannot be told from 200.
- it takes host and port instead of a URL (no path prefix but by abusing its `version` argument).

Here one `aiohttp.ClientSession` per engine, opened by the first evaluation inside the running loop
(its connector keeps up to 100 connections alive), serves every evaluation; `close()` closes it. A
request sent on a kept-alive connection the server had just closed is sent once more on a new one
if the budget allows (evaluating is side-effect free); nothing else is retried.

`probe()` (readiness, /readyz) sends the same query for a fixed input, once a second at most.

Each query asks for `?provenance=true`; when OPA serves bundles, their revisions become `revision`
(`name:rev` joined by `,` if there are several), else it stays "remote".
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from .engine import SMOKE_INPUT, PolicyError, to_decision

_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
PROBE_TTL_S = 1.0  # how long a readiness probe's outcome is reused
PROBE_TIMEOUT_S = 1.0  # a probe's budget at most (policy.opa.timeout_ms if shorter)
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)  # ClientConnectorError, a subclass, is not


def _data_path(query: str) -> str:
    """`data.mcp.authz.decision` → `mcp/authz/decision`; ValueError unless a plain dotted ref."""
    parts = query.strip().split(".")
    if len(parts) < 2 or parts[0] != "data" or not all(_SEGMENT.match(p) for p in parts[1:]):
        raise ValueError(f"policy query {query!r} must be a dotted reference below data, e.g. data.mcp.authz.decision")
    return "/".join(parts[1:])


def _revision(answer: dict[str, Any]) -> str | None:
    provenance = answer.get("provenance")
    if not isinstance(provenance, dict):
        return None
    bundles = provenance.get("bundles")
    if isinstance(bundles, dict):
        revisions = {name: b.get("revision") for name, b in bundles.items() if isinstance(b, dict)}
        revisions = {name: rev for name, rev in revisions.items() if isinstance(rev, str) and rev}
        if len(revisions) == 1:
            return next(iter(revisions.values()))
        if revisions:
            return ",".join(f"{name}:{rev}" for name, rev in sorted(revisions.items()))
    legacy = provenance.get("revision")  # the deprecated single-bundle field
    return legacy if isinstance(legacy, str) and legacy else None


class OpaEngine:
    name = "opa"

    def __init__(self, url: str, query: str = "data.mcp.authz.decision", timeout_ms: int = 250) -> None:
        """ValueError for a URL that is not http(s)://host[:port][/prefix] or a query that is not
        `data.a.b…`. Nothing is contacted until the first evaluation."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("policy.opa.url must be an http:// or https:// URL with a host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("policy.opa.url must not carry credentials, a query or a fragment")
        try:
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            raise ValueError("policy.opa.url has an invalid port") from None
        if timeout_ms <= 0:
            raise ValueError("policy.opa.timeout_ms must be positive")
        prefix = parts.path.rstrip("/")
        self._url = f"{parts.scheme}://{parts.netloc}{prefix}/v1/data/{_data_path(query)}?provenance=true"
        self._timeout = timeout_ms / 1000
        self._session: aiohttp.ClientSession | None = None
        self._probe: tuple[float, asyncio.Future[str | None]] | None = None  # (started, outcome)
        self.revision = "remote"

    def _open(self) -> aiohttp.ClientSession:
        # Made inside the running loop (the session belongs to it); never suspends, so concurrent
        # first calls cannot make two.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100),
                timeout=aiohttp.ClientTimeout(total=self._timeout * 2),  # a backstop: asyncio.timeout rules
                headers=_HEADERS,
            )
        return self._session

    async def _send(self, session: aiohttp.ClientSession, body: bytes) -> tuple[int, bytes]:
        async with session.post(self._url, data=body, allow_redirects=False) as response:
            return response.status, await response.read()

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        session = self._open()
        try:
            return await self._send(session, body)
        except aiohttp.ClientConnectorError:  # could not connect: no retry
            raise
        except _STALE:  # a kept-alive connection closed under us: once more
            return await self._send(session, body)

    async def evaluate(self, input: dict[str, Any]) -> Any:
        return await self._query(input, self._timeout)

    async def _query(self, input: dict[str, Any], timeout_s: float) -> Any:
        try:
            body = orjson.dumps({"input": input})
        except TypeError:
            raise PolicyError("the policy input cannot be encoded as JSON") from None
        try:
            async with asyncio.timeout(timeout_s):
                status, raw = await self._post(body)
        except TimeoutError:
            raise PolicyError(f"OPA did not answer within {round(timeout_s * 1000)} ms") from None
        except aiohttp.ClientError as exc:
            raise PolicyError(f"OPA is unreachable ({type(exc).__name__})") from None
        except Exception as exc:  # anything else denies too
            raise PolicyError(f"OPA query failed ({type(exc).__name__})") from None
        if status != 200:
            raise PolicyError(f"OPA answered HTTP {status}")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise PolicyError("OPA answered with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise PolicyError("OPA answered with JSON that is not an object")
        if "result" not in answer:
            raise PolicyError("OPA has no result for the query (undefined)")
        revision = _revision(answer)
        if revision is not None:
            self.revision = revision
        return answer["result"]

    async def probe(self) -> None:
        """A real decision query for SMOKE_INPUT (at most PROBE_TIMEOUT_S), its outcome kept for
        PROBE_TTL_S: probes from every kubelet and load balancer cost OPA one query a second.
        Concurrent probes share the query in flight."""
        now = time.monotonic()
        if self._probe is None or now - self._probe[0] >= PROBE_TTL_S:
            self._probe = (now, asyncio.ensure_future(self._probe_once()))
        # shielded: a probe whose client leaves must not cancel the answer the others wait for
        problem = await asyncio.shield(self._probe[1])
        if problem is not None:
            raise PolicyError(problem)

    async def _probe_once(self) -> str | None:
        try:
            to_decision(await self._query(SMOKE_INPUT, min(self._timeout, PROBE_TIMEOUT_S)))
        except PolicyError as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        if self._probe is not None:
            self._probe[1].cancel()
            self._probe = None
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
