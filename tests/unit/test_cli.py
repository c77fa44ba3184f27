import json

from proxy.cli import main


def post_call_input(methods: list[str], params: dict) -> str:
    """A policy input document: server `s` with `methods` and `params`, calling create_a_missive_post."""
    return json.dumps({
        "version": 1, "time": "2026-11-23T20:00:00Z",
        "server": {"name": "s", "methods": methods, "tags": [], "require_api_token_auth": False,
                   "expires_at": None, "params": params},
        "principal": {"authenticated": False, "via": []},
        "message": {"kind": "request", "direction": "client_to_server", "method": "tools/call",
                    "name": "create_a_missive_post"},
        "tool": {"name": "create_a_missive_post", "method": "create", "access": "write", "tags": ["posts"],
                 "annotations": {}, "arguments": {}}})


def test_config_check_ok_and_error(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\nservers: [{name: triage, methods: [read]}]\n")
    assert main(["config", "check", str(good)]) == 0
    assert "ok (1 server(s): triage" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp', timeout_s: soon}\n")
    assert main(["config", "check", str(bad)]) == 2
    assert f"{bad}: upstream.timeout_s: must be a number" in capsys.readouterr().err


def test_serve_refuses_anonymous_beyond_loopback(capsys):
    assert main(["serve", "--upstream", "http://127.0.0.1:3000/mcp", "--host", "0.0.0.0"]) == 2
    assert "no authentication is configured" in capsys.readouterr().err


def test_serve_without_upstream_names_the_key(capsys, monkeypatch):
    monkeypatch.delenv("MCP_POLICY_PROXY_CONFIG", raising=False)
    assert main(["serve"]) == 2
    assert "upstream.url: is required" in capsys.readouterr().err


def test_serve_with_a_decision_log_file_it_cannot_open_names_the_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"upstream: {{url: 'http://127.0.0.1:3000/mcp'}}\n"
                      f"decision_log: {{sink: 'file:{tmp_path}/missing/decisions.log'}}\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: decision_log.sink: cannot open {tmp_path}/missing/decisions.log" in err
    assert "Traceback" not in err


def test_config_file_from_environment(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "env.yaml"
    bad.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\nlisten: {port: 99999}\n")
    monkeypatch.setenv("MCP_POLICY_PROXY_CONFIG", str(bad))
    assert main(["serve"]) == 2
    assert f"{bad}: listen.port: must be between 0 and 65535" in capsys.readouterr().err


def test_policy_test_and_eval(tmp_path, capsys):
    assert main(["policy", "test"]) == 0
    assert capsys.readouterr().out.strip().endswith(" passed, 0 failed")

    failing = tmp_path / "p"
    failing.mkdir()
    (failing / "a.rego").write_text("package t\nimport rego.v1\ntest_ok if true\ntest_bad if false\n")
    assert main(["policy", "test", str(failing)]) == 1
    assert "FAIL t.test_bad" in capsys.readouterr().out

    doc = tmp_path / "input.json"
    doc.write_text(post_call_input(["read"], {}))
    assert main(["policy", "eval", "--input", str(doc)]) == 0
    out = capsys.readouterr().out
    assert '"allow": false' in out and "create is not among the methods of server s (read)" in out
    assert main(["policy", "eval", "--input", str(tmp_path / "missing.json")]) == 2


def test_paths_and_token_redaction():
    from proxy.transport.paths import redact_path, route

    token = "yFDRN8URcOWYvzJPORQRJXglXP8H22PZxPMEVKh7uQY"
    assert route("/mcp") == ("mcp", None) and route("/messages/") == ("messages", None)
    assert route(f"/{token}/mcp") == ("mcp", token) and route(f"/mcp/{token}") == ("mcp", token)
    assert route(f"/{token}/messages/") == ("messages", token) and route("/healthz") is None
    assert route("/a/b/mcp") is None and route("/sse/x") is None
    assert redact_path(f"/{token}/messages/?session_id=ab") == "/[redacted]/messages/?session_id=[redacted]"
    assert redact_path(f"/mcp/{token}") == "/mcp/[redacted]" and redact_path("/mcp") == "/mcp"
    assert redact_path(f"/.well-known/oauth-protected-resource/{token}/mcp") == \
        "/.well-known/oauth-protected-resource/[redacted]/mcp"
    assert redact_path("/.well-known/oauth-protected-resource/mcp") == "/.well-known/oauth-protected-resource/mcp"


def test_url_token_lookup_goes_by_digest_only():
    """The presented token is never compared with stored secrets: it is digested once, and the
    digest looked up; a near-miss costs exactly what a complete miss costs."""
    from proxy.auth.tokens import DigestIndex, mint_token, url_token_hmac

    token, key = mint_token(), "k" * 32
    calls: list[str] = []

    def digest(secret: str) -> str:
        calls.append(secret)
        return url_token_hmac(key, secret)

    index = DigestIndex([(url_token_hmac(key, token), "server")], digest)
    assert index.find(token) == "server"
    assert index.find(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert index.find("x" * 43) is None
    assert index.find("short") is None and index.find("bad token with spaces!") is None
    assert len(calls) == 3  # implausible tokens are not even digested


def test_token_create_prints_the_url_once_and_only_the_hmac_for_the_config(capsys, monkeypatch):
    import yaml

    from proxy.auth.tokens import url_token_hmac
    from proxy.config import parse

    monkeypatch.setenv("URL_TOKEN_KEY", "k" * 32)
    assert main(["token", "create", "--server", "triage", "--methods", "read,create", "--tags", "posts",
                 "--expires-at", "2026-12-31T23:59:59Z", "--base-url", "https://mcp.example.com/"]) == 0
    out = capsys.readouterr().out
    url = next(line.split()[0] for line in out.splitlines() if line.strip().startswith("https://"))
    token = url.removeprefix("https://mcp.example.com/").removesuffix("/mcp")
    assert len(token) == 43 and out.count(token) == 2  # the URL and its /sse twin, nothing else
    entry = yaml.safe_load(out.split("in the config:\n", 1)[1])[0]
    assert entry == {"name": "triage", "token_hmac": url_token_hmac("k" * 32, token),
                     "methods": ["read", "create"], "tags": ["posts"], "expires_at": "2026-12-31T23:59:59Z"}
    parse({"upstream": {"url": "http://h/mcp"}, "auth": {"url_token_key": "k" * 32}, "servers": [entry]}, "x")

    monkeypatch.delenv("URL_TOKEN_KEY")
    assert main(["token", "create", "--server", "triage"]) == 2
    assert "no URL token key" in capsys.readouterr().err


def test_a_site_extension_of_the_bundled_policies(tmp_path, capsys):
    """`@bundled` plus a directory of the deployment's own rules and tests."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.rego").write_text(
        "package mcp.authz\nimport rego.v1\n"
        'deny contains "posting is frozen here" if {\n  input.tool.name == "create_a_missive_post"\n'
        '  input.server.params.site_freeze == true\n}\n')
    (site / "site_test.rego").write_text(
        "package mcp.site_test\nimport rego.v1\n"
        'test_freeze if {\n  "posting is frozen here" in data.mcp.authz.deny with input as '
        '{"tool": {"name": "create_a_missive_post"}, "server": {"params": {"site_freeze": true}}}\n}\n')
    assert main(["policy", "test", "@bundled", str(site)]) == 0
    out = capsys.readouterr().out
    assert "PASS mcp.site_test.test_freeze" in out and "PASS mcp.authz_test." in out
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: {url: http://127.0.0.1:9/mcp}\npolicy: {paths: ['@bundled', site/]}\n")
    doc = tmp_path / "input.json"
    doc.write_text(post_call_input(["read", "create"], {"site_freeze": True}))
    assert main(["policy", "eval", "--input", str(doc), "--config", str(config)]) == 0
    assert "posting is frozen here" in capsys.readouterr().out


def test_demo_config_and_banner_with_a_public_url():
    from proxy.demo_launcher import banner, demo_config

    config, tokens = demo_config(9001, 8080, "127.0.0.1", "https://demo.example.net")
    assert config["public_url"] == "https://demo.example.net" and config["listen"] == {"host": "127.0.0.1",
                                                                                        "port": 8080}
    assert [s["name"] for s in config["servers"]] == ["triage", "support", "admin"]
    assert all("token_hmac" in s and tokens[s["name"]] not in str(s) for s in config["servers"])
    text = banner(config["public_url"], tokens, "http://127.0.0.1:9001/mcp")
    for token in tokens.values():
        assert f"https://demo.example.net/{token}/mcp" in text and f"token {token} " in text
    assert '"args": ["-y", "mcp-remote", "https://demo.example.net/' in text


def test_config_check_compiles_the_policies(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken.rego").write_text("package mcp.authz\nimport rego.v1\ndeny contains msg if {\n")
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: {url: http://127.0.0.1:9/mcp}\npolicy: {paths: ['@bundled', site/]}\n")
    assert main(["config", "check", str(config)]) == 2
    assert "broken.rego" in capsys.readouterr().err
    (site / "broken.rego").unlink()
    assert main(["config", "check", str(config)]) == 0
    assert "ok (" in capsys.readouterr().out


KNOWN_METHODS = "known: read, write, custom, list, get, create, update, delete, merge"


def test_config_check_refuses_words_the_catalog_does_not_know(tmp_path, capsys):
    """`methods: [reed]` or `tags: [suport]` would match nothing: refused, naming file, key and nearest word."""
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\n"
                      "servers: [{name: a, methods: [read]}, {name: b, token_hmac: '" + "0" * 64 + "', "
                      "methods: [read, reed]}]\nauth: {url_token_key: " + "k" * 32 + "}\n")
    assert main(["config", "check", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mcp-policy-proxy: {config}: servers[1].methods[1]: unknown method 'reed' (did you mean 'read'?); "
        f"{KNOWN_METHODS}")

    config.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\nservers: [{name: a, tags: [posts, suport]}]\n")
    assert main(["config", "check", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: servers[0].tags[1]: unknown tag 'suport' (did you mean 'support'?); known: admin, " in err
    assert "shared_labels, support, tasks, teams, users, webhooks" in err


def test_serve_refuses_words_the_catalog_does_not_know(tmp_path, capsys):
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\nservers: [{name: a, methods: [raed]}]\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert (f"{config}: servers[0].methods[0]: unknown method 'raed' (did you mean 'read'?); {KNOWN_METHODS}"
            in capsys.readouterr().err)


def test_a_custom_method_is_named_by_adding_its_tool_to_the_catalog_overrides(tmp_path, capsys):
    """An upstream's custom tool the catalog does not list cannot be named in `methods` until the
    deployment's catalog overrides list it."""
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\npolicy: {paths: ['@bundled', site/]}\n"
                      "servers: [{name: a, methods: [read, archive], tags: [archive]}]\n")
    (tmp_path / "site").mkdir()
    assert main(["config", "check", str(config)]) == 2
    assert "servers[0].methods[1]: unknown method 'archive'; known: read, " in capsys.readouterr().err
    overrides = tmp_path / "site" / "catalog" / "overrides"
    overrides.mkdir(parents=True)
    (overrides / "data.yaml").write_text("tools:\n  archive_conversation: {method: archive, access: custom}\n")
    assert main(["config", "check", str(config)]) == 2
    assert "servers[0].tags[0]: unknown tag 'archive'" in capsys.readouterr().err
    (overrides / "data.yaml").write_text(
        "tools:\n  archive_conversation: {method: archive, access: custom, tags: [archive]}\n")
    assert main(["config", "check", str(config)]) == 0
    assert "ok (1 server(s): a" in capsys.readouterr().out


def test_token_create_checks_the_entry_against_the_catalog(capsys, monkeypatch):
    monkeypatch.setenv("URL_TOKEN_KEY", "k" * 32)
    assert main(["token", "create", "--server", "triage", "--methods", "read,reed"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mcp-policy-proxy: token create: --methods: unknown method 'reed' (did you mean 'read'?); {KNOWN_METHODS}")
    assert main(["token", "create", "--server", "triage", "--tags", "suport"]) == 2
    assert "token create: --tags: unknown tag 'suport' (did you mean 'support'?)" in capsys.readouterr().err
    assert main(["token", "create", "--server", "Triage!"]) == 2
    assert "token create: --server: must be lowercase letters" in capsys.readouterr().err
    assert main(["token", "create"]) == 2
    assert "token create: --server NAME is required (or --api --name NAME" in capsys.readouterr().err


def _bearer_config(tmp_path, auth: str):
    config = tmp_path / "proxy.yaml"
    config.write_text("upstream: {url: 'http://127.0.0.1:3000/mcp'}\npublic_url: https://mcp.example.com\n"
                      f"auth: {{url_token_key: {'k' * 32}, {auth}}}\n"
                      "servers: [{name: default, methods: [read]}]\n")
    return config


def test_token_create_require_api_token_auth_with_a_config_that_has_bearer_credentials(tmp_path, capsys):
    import yaml

    from proxy.config import load

    for auth in ("jwt: {issuer: 'https://idp.example.com', jwks_url: 'https://idp.example.com/jwks'}",
                 "api_tokens: [{name: ci, sha256: '" + "a" * 64 + "'}]"):
        config = _bearer_config(tmp_path, auth)
        assert main(["token", "create", "--server", "strict", "--methods", "read,merge", "--tags", "support",
                     "--require-api-token-auth", "--config", str(config)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "https://mcp.example.com/" in out  # public_url from the config
        entry = yaml.safe_load(out.split("in the config:\n", 1)[1])[0]
        assert entry["require_api_token_auth"] is True and entry["methods"] == ["read", "merge"]
        data = yaml.safe_load(config.read_text())
        data["servers"].append(entry)
        config.write_text(yaml.safe_dump(data))
        loaded = load(config)  # the printed entry loads beside the others
        assert [s.name for s in loaded.servers] == ["default", "strict"] and loaded.servers[1].require_api_token_auth
        assert main(["config", "check", str(config)]) == 0
        capsys.readouterr()


def test_token_create_require_api_token_auth_without_bearer_credentials(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("URL_TOKEN_KEY", "k" * 32)
    assert main(["token", "create", "--server", "strict", "--require-api-token-auth"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mcp-policy-proxy: token create: --require-api-token-auth needs bearer credentials: "
        "give --config FILE whose auth configures api_tokens or jwt")
    config = tmp_path / "proxy.yaml"
    config.write_text(f"upstream: {{url: 'http://127.0.0.1:3000/mcp'}}\nauth: {{url_token_key: {'k' * 32}}}\n")
    assert main(["token", "create", "--server", "strict", "--require-api-token-auth", "--config", str(config)]) == 2
    assert (f"--require-api-token-auth needs bearer credentials: {config} configures neither auth.api_tokens "
            "nor auth.jwt") in capsys.readouterr().err


def test_token_create_api_prints_the_token_once_and_an_entry_that_authenticates(capsys):
    import asyncio
    import hashlib

    import yaml

    from proxy.auth.authenticator import Authenticator
    from proxy.config import parse

    assert main(["token", "create", "--api", "--name", "ci-agent"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[1].strip()
    assert len(token) == 43 and out.count(token) == 1  # printed once, nowhere else
    entry = yaml.safe_load(out.split("in the config:\n", 1)[1])
    assert entry == [{"name": "ci-agent", "sha256": hashlib.sha256(token.encode()).hexdigest()}]
    assert "Authorization: Bearer <the token>" in out
    config = parse({"upstream": {"url": "http://h/mcp"}, "auth": {"api_tokens": entry}}, "x")
    access = asyncio.run(Authenticator(config).authenticate(None, f"Bearer {token}"))
    assert access.principal.subject == "ci-agent" and access.principal.via == ("api_token",)


def test_token_create_api_usage_errors(capsys):
    assert main(["token", "create", "--api"]) == 2
    assert "token create: --api needs --name NAME" in capsys.readouterr().err
    assert main(["token", "create", "--api", "--name", "ci", "--server", "triage"]) == 2
    assert "token create: --server applies to URL tokens, not to --api" in capsys.readouterr().err
    assert main(["token", "create", "--name", "ci"]) == 2
    assert "token create: --name names an API token (give --api)" in capsys.readouterr().err
