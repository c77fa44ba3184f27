from proxy.cli import main


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
    doc.write_text('{"version": 1, "time": "2026-11-23T20:00:00Z", "server": {"name": "s", "methods": ["read"], '
                   '"tags": [], "require_api_token_auth": false, "expires_at": null, "params": {}}, '
                   '"principal": {"authenticated": false, "via": []}, '
                   '"message": {"kind": "request", "direction": "client_to_server", "method": "tools/call", '
                   '"name": "create_a_missive_post"}, "tool": {"name": "create_a_missive_post", "method": "create", '
                   '"access": "write", "tags": ["posts"], "annotations": {}, "arguments": {}}}')
    assert main(["policy", "eval", "--input", str(doc)]) == 0
    out = capsys.readouterr().out
    assert '"allow": false' in out and "create is not among the methods of server s (read)" in out
    assert main(["policy", "eval", "--input", str(tmp_path / "missing.json")]) == 2
