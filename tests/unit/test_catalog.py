import pytest

from proxy.config import BUNDLED_POLICIES, load
from proxy.enforce.catalog import Catalog, CatalogError
from proxy.policy.loader import PolicyLoadError
from proxy.policy.manager import build_policy_set

CATALOG = Catalog({
    "tools": {"merge_missive_conversations": {"method": "merge", "access": "custom", "tags": ["conversations"]},
              "create_a_missive_post": {"tags": ["posts", "conversations"]}},
    "tag_rules": [{"word": "conversation", "tags": ["conversations"]}, {"word": "message", "tags": ["messages"]},
                  {"word": "shared_label", "tags": ["shared_labels"]}, {"word": "label", "tags": ["labels"]}],
})


@pytest.mark.parametrize(("name", "method", "access"), [
    ("list_all_missive_conversations", "list", "read"),
    ("get_single_missive_conversation_by_id", "get", "read"),
    ("create_a_missive_draft", "create", "write"),
    ("create_an_invoice", "create", "write"),
    ("update_a_missive_contact_by_id", "update", "write"),
    ("delete_a_missive_post_by_id", "delete", "write"),
    ("merge_missive_conversations", "merge", "custom"),
    ("echo", "echo", "custom"),
    ("get_single_missive_conversation", "get_single_missive_conversation", "custom"),  # no _by_id: no convention
])
def test_naming_convention_and_explicit_entries(name, method, access):
    info = CATALOG.classify(name)
    assert (info.method, info.access) == (method, access)


def test_read_only_annotation_classifies_unconventional_names_as_reads():
    assert CATALOG.classify("search_everything", {"readOnlyHint": True}).access == "read"
    assert CATALOG.classify("search_everything", {"readOnlyHint": False}).access == "custom"
    # The name's convention wins over a (possibly wrong) hint.
    assert CATALOG.classify("delete_a_missive_post_by_id", {"readOnlyHint": True}).access == "write"


def test_tags_from_entries_and_rules():
    assert CATALOG.classify("create_a_missive_post").tags == ("posts", "conversations")
    assert CATALOG.classify("list_all_missive_conversation_messages").tags == ("conversations", "messages")
    assert CATALOG.classify("list_all_missive_shared_labels").tags == ("shared_labels",)
    assert CATALOG.classify("echo").tags == ()


def test_empty_catalog_still_classifies():
    assert Catalog().classify("list_all_things").method == "list"


def test_overrides_replace_fields_of_entries_and_rules():
    catalog = Catalog({
        "tools": {"create_a_missive_post": {"method": "create", "access": "write", "tags": ["posts"]}},
        "tag_rules": [{"word": "report", "tags": ["analytics"]}],
        "overrides": {
            "tools": {"create_a_missive_post": {"tags": ["posts", "notes"]},      # re-tagged, method kept
                      "search_inbox": {"method": "list", "access": "read", "tags": ["conversations"]}},
            "tag_rules": [{"word": "report", "tags": ["reports"]}, {"word": "invoice", "tags": ["billing"]}],
        },
    })
    post = catalog.classify("create_a_missive_post")
    assert (post.method, post.access, post.tags) == ("create", "write", ("posts", "notes"))
    assert catalog.classify("search_inbox").access == "read"
    assert catalog.classify("get_single_report_by_id").tags == ("reports",)
    assert catalog.classify("list_all_invoices").tags == ("billing",)
    assert "search_inbox" in catalog.known_names


@pytest.mark.parametrize(("data", "where"), [
    ({"tools": ["a"]}, "data.catalog.tools"),
    ({"tools": {"a": {"method": "get", "colour": "red"}}}, "data.catalog.tools.a"),
    ({"overrides": {"tools": {"a": {"tags": "x"}}}}, "data.catalog.overrides.tools.a.tags"),
    ({"overrides": {"tag_rules": [{"tags": ["x"]}]}}, "data.catalog.overrides.tag_rules"),
    ({"overrides": []}, "data.catalog.overrides"),
    ({"overrides": {"tools": {"a": {"access": "admin"}}}}, "data.catalog.overrides.tools.a.access"),
    ({"tools": {"a": {"method": 3}}}, "data.catalog.tools.a.method"),
])
def test_malformed_catalog_data_is_refused_naming_the_path(data, where):
    with pytest.raises(CatalogError) as err:
        Catalog(data)
    assert str(err.value).startswith(where + ":")


def test_a_deployment_extends_the_bundled_policies(tmp_path):
    """`policy.paths: ["@bundled", extra/]`: the shipped policies and catalog, plus the deployment's
    overrides; a malformed overrides file is refused naming that file."""
    extra = tmp_path / "extra"
    (extra / "catalog" / "overrides").mkdir(parents=True)
    overrides = extra / "catalog" / "overrides" / "data.yaml"
    overrides.write_text("tools:\n  create_a_missive_post: {tags: [posts, notes]}\n")
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text("upstream: {url: http://127.0.0.1:9/mcp}\npolicy: {paths: ['@bundled', extra/]}\n")
    config = load(config_file)
    assert config.policy.paths == (BUNDLED_POLICIES, str(extra))
    catalog = build_policy_set(config.policy).catalog
    assert catalog.classify("create_a_missive_post").tags == ("posts", "notes")
    assert catalog.classify("list_all_missive_conversations").tags == ("conversations", "support")
    overrides.write_text("tools:\n  create_a_missive_post: {tags: notes}\n")
    with pytest.raises(PolicyLoadError) as err:
        build_policy_set(config.policy)
    assert str(err.value).startswith(f"{overrides}: data.catalog.overrides.tools.create_a_missive_post.tags:")


def test_known_methods_and_tags_of_entries_rules_and_overrides():
    catalog = Catalog({
        "tools": {"merge_missive_conversations": {"method": "merge", "access": "custom", "tags": ["conversations"]},
                  "archive_all": {"tags": ["archive"]}},       # no method: its name is its (custom) method
        "tag_rules": [{"word": "label", "tags": ["labels"]}],
        "overrides": {"tools": {"search_inbox": {"method": "search", "access": "read", "tags": ["inbox"]},
                                "create_a_missive_post": {"tags": ["posts", "notes"]}},   # method by convention
                      "tag_rules": [{"word": "invoice", "tags": ["billing"]}]},
    })
    assert catalog.known_methods == ("read", "write", "custom", "list", "get", "create", "update", "delete",
                                     "archive_all", "merge", "search")
    assert catalog.known_tags == ("archive", "billing", "conversations", "inbox", "labels", "notes", "posts")
    assert Catalog().known_methods[:3] == ("read", "write", "custom") and Catalog().known_tags == ()


def test_the_shipped_catalog_knows_the_demo_servers_words():
    from proxy.demo_launcher import EXAMPLE_SERVERS

    catalog = build_policy_set(load(None, {"upstream.url": "http://h/mcp"}).policy).catalog
    assert "merge" in catalog.known_methods and {"support", "admin", "shared_labels"} <= set(catalog.known_tags)
    for server in EXAMPLE_SERVERS:
        assert set(server["methods"]) <= set(catalog.known_methods)
        assert set(server["tags"]) <= set(catalog.known_tags)


def test_a_policy_reload_whose_catalog_drops_a_word_the_config_uses_is_rejected(tmp_path, caplog):
    """The overrides that introduced tag `notes` lose it while a server still names it: the reload
    is refused like a broken policy, and the previous policy set stays in force."""
    from types import SimpleNamespace

    from proxy.observe.metrics import Metrics
    from proxy.policy.manager import PolicyManager

    extra = tmp_path / "extra"
    (extra / "catalog" / "overrides").mkdir(parents=True)
    overrides = extra / "catalog" / "overrides" / "data.yaml"
    overrides.write_text("tools:\n  create_a_missive_post: {tags: [posts, notes]}\n")
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text("upstream: {url: http://127.0.0.1:9/mcp}\npolicy: {paths: ['@bundled', extra/]}\n"
                           "servers: [{name: notes, methods: [read, create], tags: [notes]}]\n")
    config = load(config_file)
    first = build_policy_set(config.policy)
    holder = SimpleNamespace(policy=first, metrics=Metrics())
    manager = PolicyManager(config.policy, holder, lambda: config)

    overrides.write_text("tools:\n  create_a_missive_post: {tags: [posts, memos]}\n")
    assert manager.reload() is False and holder.policy is first
    assert (f"policy reload rejected, the previous version stays in force: its catalog does not know a word "
            f"the running config uses: {config_file}: servers[0].tags[0]: unknown tag 'notes'") in caplog.text
    assert 'mcp_proxy_policy_reloads_total{result="failure"} 1.0' in holder.metrics.render().decode()

    overrides.write_text("tools:\n  create_a_missive_post: {tags: [posts, notes, memos]}\n")
    assert manager.reload() is True and holder.policy is not first
    assert holder.policy.catalog.classify("create_a_missive_post").tags == ("posts", "notes", "memos")


def _reference_tags(catalog: Catalog, name: str) -> tuple[str, ...]:
    """The rule matching as first written (a scan of every rule over every position)."""
    words = name.lower().replace("-", "_").split("_")
    free = [True] * len(words)
    tags: list[str] = []
    for word, rule_tags in catalog._rules:
        parts = word.split("_")
        n = len(parts)
        for i in range(len(words) - n + 1):
            window = words[i:i + n]
            if all(free[i:i + n]) and window[:-1] == parts[:-1] and window[-1] in (parts[-1], parts[-1] + "s"):
                free[i:i + n] = [False] * n
                tags.extend(t for t in rule_tags if t not in tags)
    return tuple(tags)


def test_tag_rules_match_as_the_rule_by_rule_scan_did():
    import random

    catalog = Catalog({"tag_rules": [
        {"word": "conversation", "tags": ["conversations"]}, {"word": "message", "tags": ["messages"]},
        {"word": "shared_label", "tags": ["shared_labels"]}, {"word": "label", "tags": ["labels"]},
        {"word": "shared", "tags": ["sharing"]}, {"word": "a_b_c", "tags": ["abc"]}, {"word": "b", "tags": ["b"]},
        {"word": "s", "tags": ["s"]}, {"word": "", "tags": ["empty"]}, {"word": "label_s", "tags": ["odd"]}]})
    vocabulary = ["conversation", "conversations", "message", "shared", "label", "labels", "a", "b", "bs", "c",
                  "cs", "s", "ss", "", "Label", "x"]
    rng = random.Random(7)
    for _ in range(3000):
        name = rng.choice("_-").join(rng.choice(vocabulary) for _ in range(rng.randint(1, 7)))
        assert catalog._tags_from_rules(name) == _reference_tags(catalog, name), name


def test_tag_rules_cost_linear_time_in_the_name():
    """A 2 MiB name took the rule-by-rule scan 4-7 s (the event loop blocked); now a look-up per word."""
    import time

    catalog = Catalog({"tag_rules": [{"word": f"w{i}_x", "tags": [f"t{i}"]} for i in range(50)]})
    start = time.perf_counter()
    assert catalog.classify("x_" * 10**6).tags == ()
    assert time.perf_counter() - start < 2.0


def test_the_classification_cache_is_bounded_in_characters(monkeypatch):
    import proxy.enforce.catalog as catalog_module

    monkeypatch.setattr(catalog_module, "MAX_CACHED_CHARS", 1000)
    catalog = Catalog()
    for i in range(20):
        catalog.classify(f"{i:03d}" + "n" * 97)  # 100 characters each
    assert len(catalog._cache) == 10 and catalog._cached_chars == 1000
    assert catalog.classify("019" + "n" * 97).method == "019" + "n" * 97  # still classified, just not kept
