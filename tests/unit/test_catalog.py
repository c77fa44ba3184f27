import pytest

from proxy.enforce.catalog import Catalog

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
