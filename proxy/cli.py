"""Command line: `mcp-policy-proxy serve | demo | token create | upstream login | upstream status | policy test |
policy eval | config check`.

Exit codes: 0 ok, 2 usage or configuration error (the message names file and key), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import BUNDLED_POLICIES, BUNDLED_REF, Config, ConfigError, Policy, load
from .observe.decision_log import DecisionLogError
from .policy.loader import PolicyLoadError

log = logging.getLogger("mcp_policy_proxy")

CONFIG_ENV = "MCP_POLICY_PROXY_CONFIG"
LOG_FORMATS = ("json", "text")
LOG_FORMAT_HELP = "every log line as JSON or as text (default: text on a terminal, else json; docs/logging.md)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-policy-proxy", description="Policy-enforcing reverse proxy for MCP.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help=f"YAML config file (default: ${CONFIG_ENV})")
    serve.add_argument("--upstream", help="upstream Streamable HTTP URL (overrides upstream.url)")
    serve.add_argument("--upstream-sse", help="upstream legacy SSE URL (overrides upstream.sse_url)")
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (overrides listen.workers; "
                                                   "more than 1 needs auth.session_key: docs/scaling.md)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request (URL tokens redacted)")
    serve.add_argument("--log-format", choices=LOG_FORMATS, help=LOG_FORMAT_HELP)

    demo = sub.add_parser("demo", help="the proxy in front of a demo Missive MCP server, with example servers")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    demo.add_argument("--public-url", help="the URL clients use (e.g. an HTTPS tunnel's); printed in the URLs")
    demo.add_argument("--log-format", choices=LOG_FORMATS, help=LOG_FORMAT_HELP)

    tok = sub.add_parser("token", help="URL tokens and API tokens")
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    create = tok_sub.add_parser("create", help="mint a URL token (--server) or an API token (--api): prints the "
                                               "secret once and the config entry")
    create.add_argument("--server", help="server name (URL tokens)")
    create.add_argument("--methods", help="comma-separated (default: read)")
    create.add_argument("--tags", help="comma-separated tool tags (default: all)")
    create.add_argument("--expires-at", help="RFC 3339 instant, e.g. 2026-12-31T23:59:59Z")
    create.add_argument("--require-api-token-auth", action="store_true", help="also require a bearer token")
    create.add_argument("--config", help="take auth, public_url and the catalog (policy.paths) from this config")
    create.add_argument("--base-url", help="the proxy's public URL (default: public_url, else http://127.0.0.1:8080)")
    create.add_argument("--api", action="store_true", help="mint an API token (a bearer token) instead")
    create.add_argument("--name", help="the API token's name (with --api): the principal's subject")

    pol = sub.add_parser("policy", help="policy tools")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    ptest = pol_sub.add_parser("test", help="run every Rego test (test_* rules) with the embedded engine")
    ptest.add_argument("paths", nargs="*", help="policy files or directories; @bundled: the shipped ones (default)")
    peval = pol_sub.add_parser("eval", help="print the decision for one input document")
    peval.add_argument("--input", required=True, help="JSON file holding the policy input (docs/policy-input.md)")
    peval.add_argument("--config", help="config file whose policy section to use (default: bundled policies)")

    up = sub.add_parser("upstream", help="the proxy's OAuth grant to the upstream (upstream.oauth; docs/missive.md)")
    up_sub = up.add_subparsers(dest="upstream_command", required=True)
    login = up_sub.add_parser("login", help="log in to the upstream in a browser: prints the URL to open, waits "
                                            "for the redirect on 127.0.0.1:<upstream.oauth.redirect_port>, and "
                                            "keeps the grant in upstream.oauth.token_file")
    login.add_argument("--config", help=f"YAML config file (default: ${CONFIG_ENV})")
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the redirect (default 300)")
    ustatus = up_sub.add_parser("status", help="the grant's scopes and expiry (never a token)")
    ustatus.add_argument("--config", help=f"YAML config file (default: ${CONFIG_ENV})")
    for parser in (login, ustatus):
        parser.add_argument("--server", help="the grant of this server's upstream (servers[].upstream.oauth) "
                                             "instead of the top-level upstream's")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file and its policies, and exit")
    check.add_argument("file")
    return p


def _serve_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for flag, key in (("upstream", "upstream.url"), ("upstream_sse", "upstream.sse_url"),
                      ("host", "listen.host"), ("port", "listen.port"), ("workers", "listen.workers")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return load(args.config or os.environ.get(CONFIG_ENV) or None, overrides)


def check_exposure(config: Config) -> str | None:
    """Refuse to serve anonymous clients beyond loopback unless the operator said so explicitly."""
    if config.auth.configured or config.auth.anonymous:
        return None
    if config.loopback_only:
        log.warning("no authentication configured: serving anonymous clients on loopback (%s) only",
                    config.listen.host)
        return None
    return (f"{config.source}: auth: no authentication is configured and listen.host {config.listen.host!r} "
            "is not loopback; configure auth or set auth.anonymous: true")


def serve(config: Config, log_level: str, access_log: bool = False,
          reload_config: Callable[[], Config] | None = None, log_format: str | None = None) -> int:
    from .app import create_app
    from .observe import logging_setup
    from .transport.http_server import serve as serve_http

    log_config = logging_setup.configure(log_format, log_level)  # every logger, uvicorn's too, from here on
    problem = check_exposure(config)
    if problem:
        print(f"mcp-policy-proxy: {problem}", file=sys.stderr)
        return 2
    if config.listen.workers > 1 or config.cluster is not None:  # a worker group, or one of several replicas
        from .stdio.launcher import shared_bridge
        from .transport.workers import serve_group

        with shared_bridge(config):  # a stdio upstream: one bridge for every worker (proxy/stdio/launcher.py)
            return serve_group(config, reload_config, log_level=log_level, access_log=access_log,
                               log_format=log_format)
    try:
        app = create_app(config, reload_config=reload_config)
    except PolicyLoadError as exc:
        print(f"mcp-policy-proxy: {config.source}: policy: {exc}", file=sys.stderr)
        return 2
    except DecisionLogError as exc:
        print(f"mcp-policy-proxy: {config.source}: decision_log.sink: {exc}; create its directory or name "
              "another file", file=sys.stderr)
        return 2
    # SIGTERM: drain (streams end, requests in flight finish within limits.shutdown_grace_s), exit 0.
    started = serve_http(app, config, app.drain, app.metrics.limit_rejected, log_level=log_level,
                         access_log=access_log, log_config=log_config)
    return 0 if started else 1


# Which flag of `token create` fills which key of the server entry (errors name the flag).
_ENTRY_FLAGS = {"name": "--server", "methods": "--methods", "tags": "--tags", "expires_at": "--expires-at",
                "require_api_token_auth": "--require-api-token-auth"}


def _refuse(problem: str) -> int:
    print(f"mcp-policy-proxy: token create: {problem}", file=sys.stderr)
    return 2


def token_create(args: argparse.Namespace) -> int:
    if args.api:
        return api_token_create(args)
    if args.name is not None:
        return _refuse("--name names an API token (give --api); a URL token's server is --server")
    if not args.server:
        return _refuse("--server NAME is required (or --api --name NAME for an API token)")
    import yaml

    from .auth.tokens import mint_token, url_token_hmac

    config = load(args.config) if args.config else None
    key = config.auth.url_token_key if config else os.environ.get("URL_TOKEN_KEY")
    if not key:
        return _refuse("no URL token key (give --config with auth.url_token_key, or set URL_TOKEN_KEY)")
    entry: dict[str, Any] = {"name": args.server, "token_hmac": None,
                             "methods": [m for m in ("read" if args.methods is None else args.methods).split(",") if m]}
    if args.tags:
        entry["tags"] = [t for t in args.tags.split(",") if t]
    if args.require_api_token_auth:
        if not (config and (config.auth.api_tokens or config.auth.jwt)):
            where = (f"{args.config} configures neither auth.api_tokens nor auth.jwt" if config else
                     "give --config FILE whose auth configures api_tokens or jwt")
            return _refuse(f"--require-api-token-auth needs bearer credentials: {where}")
        entry["require_api_token_auth"] = True
    if args.expires_at:
        entry["expires_at"] = args.expires_at
    problem = _check_server_entry(entry, args.config, key)
    if problem:
        return _refuse(problem)
    token = mint_token()
    entry["token_hmac"] = url_token_hmac(key, token)
    base = (args.base_url or (config.public_url if config else None) or "http://127.0.0.1:8080").rstrip("/")
    print("URL (shown once: store it like a password; the proxy keeps only its HMAC):")
    print(f"  {base}/{token}/mcp        (legacy SSE: {base}/{token}/sse)\n")
    print("Add to servers: in the config:")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0


def _check_server_entry(entry: dict[str, Any], config_path: str | None, key: str) -> str | None:
    """Validate a new server entry as the proxy would: with the config's auth section (or none) and
    against the words of its catalog (or the bundled one). The problem, naming the flag, or None."""
    from .config_words import check_config_words
    from .policy.manager import build_policy_set

    probe = [{**entry, "token_hmac": "0" * 64}]
    try:
        if config_path:  # the file as it is, with the new entry as its only server
            config = load(config_path, {"servers": probe})
        else:
            config = load(None, {"upstream.url": "http://127.0.0.1/mcp", "auth.url_token_key": key, "servers": probe})
        check_config_words(config, build_policy_set(config.policy).catalog)
    except ConfigError as exc:
        if not exc.key.startswith("servers[0]."):
            raise
        field = exc.key.removeprefix("servers[0].").split(".")[0].split("[")[0]
        return f"{_ENTRY_FLAGS.get(field, field)}: {exc.message}"
    return None


def api_token_create(args: argparse.Namespace) -> int:
    """`token create --api --name NAME`: an API token, printed once, and its `auth.api_tokens` entry."""
    import yaml

    from .auth.tokens import mint_token, sha256_hex

    for flag, value in (("--server", args.server), ("--methods", args.methods), ("--tags", args.tags),
                        ("--expires-at", args.expires_at), ("--require-api-token-auth", args.require_api_token_auth),
                        ("--config", args.config), ("--base-url", args.base_url)):
        if value:
            return _refuse(f"{flag} applies to URL tokens, not to --api")
    if not (args.name and args.name.strip()):
        return _refuse("--api needs --name NAME (the principal's subject in policies and logs)")
    token = mint_token()
    entry = {"name": args.name, "sha256": sha256_hex(token)}
    load(None, {"upstream.url": "http://127.0.0.1/mcp", "auth.api_tokens": [entry]})  # the entry must load
    print("API token (shown once: store it like a password; the proxy keeps only its SHA-256):")
    print(f"  {token}\n")
    print("Clients send it on every request as: Authorization: Bearer <the token>\n")
    print("Add to auth.api_tokens: in the config:")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0


def policy_test(paths: list[str]) -> int:
    from .policy.testing import run_rego_tests

    results = run_rego_tests([BUNDLED_POLICIES if p == BUNDLED_REF else p for p in paths] or [BUNDLED_POLICIES])
    for r in results:
        status = "PASS" if r.passed else "FAIL"
        detail = f": {r.error}" if r.error else ""
        print(f"{status} {r.package}.{r.name} ({r.duration_ns / 1000:.0f} µs){detail}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


def policy_eval(input_path: str, config_path: str | None) -> int:
    import asyncio
    import json

    from .policy.engine import PolicyError, to_decision
    from .policy.manager import build_policy_set

    policy = load(config_path).policy if config_path else Policy()
    try:
        document = json.loads(Path(input_path).read_text())
    except (OSError, ValueError) as exc:
        print(f"mcp-policy-proxy: {input_path}: {exc}", file=sys.stderr)
        return 2
    engine = build_policy_set(policy).engine
    try:
        result = asyncio.run(engine.evaluate(document))
        to_decision(result)
    except PolicyError as exc:
        print(f"mcp-policy-proxy: no valid decision (deny): {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            # A partial, not a lambda: workers are spawned with it (proxy/transport/workers.py).
            return serve(_serve_config(args), args.log_level, args.access_log, functools.partial(_serve_config, args),
                         args.log_format)
        if args.command == "demo":
            from .demo_launcher import run_demo

            return run_demo(args.host, args.port, args.log_level, args.public_url, args.log_format)
        if args.command == "token":
            return token_create(args)
        if args.command == "policy":
            if args.policy_command == "test":
                return policy_test(args.paths)
            return policy_eval(args.input, args.config)
        if args.command == "upstream":
            from .upstream_oauth.commands import command

            config = load(args.config or os.environ.get(CONFIG_ENV) or None)
            if args.server is not None:  # servers[].upstream: that upstream's grant (docs/upstreams.md)
                server = next((s for s in config.servers if s.name == args.server), None)
                if server is None:
                    print(f"mcp-policy-proxy: {config.source}: no server named {args.server!r}", file=sys.stderr)
                    return 2
                config = dataclasses.replace(config, upstream=server.upstream or config.upstream)
            return command(args.upstream_command, config, getattr(args, "timeout", 0.0))
        if args.command == "config":
            from .config_words import check_config_words
            from .policy.manager import build_policy_set

            config = load(args.file)
            policy = build_policy_set(config.policy)  # the policies must load and compile too (OPA is not contacted)
            check_config_words(config, policy.catalog)  # servers name only methods and tags the catalog knows
            names = ", ".join(s.name for s in config.servers)
            upstream = config.upstream.url or f"stdio {config.upstream.command[0]!r}"
            print(f"{args.file}: ok ({len(config.servers)} server(s): {names}; upstream {upstream}; "
                  f"policies {', '.join(config.policy.paths)})")
            return 0
    except (ConfigError, PolicyLoadError) as exc:
        print(f"mcp-policy-proxy: {exc}", file=sys.stderr)
        return 2
    return 2
