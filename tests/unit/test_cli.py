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
    assert redact_path(f"/{token}/messages/?session_id=ab") == "/[redacted]/messages/?session_id=ab"
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
