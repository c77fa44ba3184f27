import pytest

from proxy.config import ConfigError, load


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file_give_one_default_server(tmp_path):
    config = load(None, {"upstream.url": "http://127.0.0.1:3000/mcp"})
    assert [s.name for s in config.servers] == ["default"]
    assert config.upstream.sse_url == "http://127.0.0.1:3000/sse"
    assert config.loopback_only and config.limits.max_body_bytes == 4 * 1024 * 1024


def test_env_expansion_and_secret_files(tmp_path, monkeypatch):
    monkeypatch.setenv("UP_TOKEN", "t0k")
    secret = tmp_path / "key"
    secret.write_text("hmac-key-of-32-characters-000000\n")
    path = write(tmp_path, f"""
upstream:
  url: http://127.0.0.1:3000/mcp
  headers: {{Authorization: "Bearer ${{UP_TOKEN}}"}}
auth:
  url_token_key_file: {secret}
""")
    config = load(path)
    assert config.upstream.headers == {"authorization": "Bearer t0k"}
    assert config.auth.url_token_key == "hmac-key-of-32-characters-000000"


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("upstream: {url: ftp://x}", "upstream.url", "http(s) URL"),
    ("listen: {port: 1}", "upstream.url", "is required"),
    ("upstream: {url: 'http://h/mcp', timeout_s: fast}", "upstream.timeout_s", "must be a number"),
    ("upstream: {url: 'http://h/mcp', timeout_s: -1}", "upstream.timeout_s", "greater than 0"),
    ("upstream: {url: 'http://h/mcp', headers: {Authorization: '${NOPE_UNSET}'}}", "upstream.headers.Authorization",
     "NOPE_UNSET is not set"),
    ("upstream: {url: 'http://h/mcp'}\nlisten: {hots: x}", "listen.hots", "unknown key"),
    ("upstream: {url: 'http://h/mcp'}\nservers: [{name: a}, {name: a, token_hmac: '" + "0" * 64 + "'}]",
     "servers[1].name", "duplicate"),
    ("upstream: {url: 'http://h/mcp'}\nservers: [{name: a, expires_at: soon}]", "servers[0].expires_at", "ISO 8601"),
    ("upstream: {url: 'http://h/mcp'}\nservers: [{name: a, methods: read}]", "servers[0].methods", "must be a list"),
    ("upstream: {url: 'http://h/mcp'}\npolicy: {engine: magic}", "policy.engine", "embedded or opa"),
    ("upstream: {url: 'http://h/mcp'}\nauth: {url_token_key_file: /nonexistent/k}", "auth.url_token_key_file",
     "cannot read"),
])
def test_invalid_config_names_file_and_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert fragment in str(err.value)


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load(write(tmp_path, "a: [1"))


def test_servers_may_name_only_words_the_catalog_knows(tmp_path):
    from proxy.config_words import UnknownWordError, check_config_words
    from proxy.enforce.catalog import Catalog

    catalog = Catalog({"tools": {"merge_things": {"method": "merge", "access": "custom", "tags": ["things"]}},
                       "tag_rules": [{"word": "widget", "tags": ["widgets", "parts"]}]})
    path = write(tmp_path, "upstream: {url: 'http://h/mcp'}\n"
                           "servers: [{name: a, methods: [read, write, custom, list, get, create, update, delete, "
                           "merge], tags: [things, widgets, parts]}]\n")
    check_config_words(load(path), catalog)  # every access level, convention method and catalog word
    check_config_words(load(None, {"upstream.url": "http://h/mcp"}), Catalog())  # the default server

    for servers, key, message in [
        ("[{name: a, methods: [reed]}]", "servers[0].methods[0]",
         "unknown method 'reed' (did you mean 'read'?); known: read, write, custom, list, get, create, update, "
         "delete, merge"),
        ("[{name: a}, {name: b, token_hmac: '" + "0" * 64 + "', methods: [read, mrege]}]", "servers[1].methods[1]",
         "unknown method 'mrege' (did you mean 'merge'?)"),
        ("[{name: a, methods: [Read]}]", "servers[0].methods[0]", "unknown method 'Read' (did you mean 'read'?)"),
        ("[{name: a, methods: [archive]}]", "servers[0].methods[0]", "unknown method 'archive'; known: read, "),
        ("[{name: a, tags: [things, widget]}]", "servers[0].tags[1]",
         "unknown tag 'widget' (did you mean 'widgets'?); known: parts, things, widgets"),
    ]:
        path = write(tmp_path, "upstream: {url: 'http://h/mcp', sse_url: 'http://h/sse'}\n"
                               f"auth: {{url_token_key: {'k' * 32}}}\nservers: {servers}\n")
        with pytest.raises(UnknownWordError) as err:
            check_config_words(load(path), catalog)
        assert isinstance(err.value, ConfigError) and err.value.key == key
        assert str(err.value).startswith(f"{path}: {key}: {message}")


def test_a_long_list_of_known_words_is_cut_short():
    from proxy.config_words import unknown_word

    known = tuple(f"tag{i:02}" for i in range(30))
    message = unknown_word("tag", "tagg01", known)
    assert message.startswith("unknown tag 'tagg01' (did you mean 'tag01'?); known: tag00, tag01, ")
    assert message.endswith(", tag23, …") and "tag24" not in message
    assert unknown_word("tag", "x", ()) == "unknown tag 'x'; known: (none)"


def test_invalid_yaml_names_the_place_but_never_quotes_the_line(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text("upstream:\n  url: http://127.0.0.1:9/mcp\nauth:\n  url_token_key: S3CRET-KEY-VALUE: bad\n")
    with pytest.raises(ConfigError) as err:
        load(str(path))
    assert "line 4" in str(err.value) and "S3CRET" not in str(err.value)
