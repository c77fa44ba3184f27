# Unit tests of policies/missive/missive.rego (the Missive policy pack, docs/missive.md).
# In package mcp.authz_test, next to the default policy's tests (tests/unit/test_rego_policies.py
# expects that one test package); every name here is prefixed `missive_` / `test_missive_`.
package mcp.authz_test

import rego.v1

import data.mcp.authz

# --- Fixtures ----------------------------------------------------------------------------------

missive_server(params) := {
	"name": "missive",
	"methods": ["read", "write", "custom"],
	"tags": [],
	"require_api_token_auth": false,
	"expires_at": null,
	"params": params,
}

# The input of a tools/call of `name` (classified by the catalog) with `arguments`.
missive_input(name, arguments, params) := inp if {
	entry := data.catalog.tools[name]
	tool := {
		"name": name, "method": entry.method, "access": entry.access, "tags": entry.tags,
		"annotations": {}, "arguments": arguments,
	}
	inp := {
		"version": 1,
		"time": "2026-11-23T20:00:00Z",
		"server": missive_server(params),
		"principal": {"authenticated": true, "via": ["url_token"], "subject": "agent-7", "claims": {}, "scopes": []},
		"transport": {"kind": "streamable_http", "protocol_version": "2025-11-25", "http_method": "POST", "origin": null},
		"message": {"kind": "request", "direction": "client_to_server", "method": "tools/call", "name": name},
		"tool": tool,
	}
}

# The decision for that call.
missive_decide(name, arguments, params) := d if {
	d := authz.decision with input as missive_input(name, arguments, params)
}

missive_allowed(name, arguments, params) if missive_decide(name, arguments, params).allow == true

missive_reasons(name, arguments, params) := missive_decide(name, arguments, params).reasons

missive_on_params := {"missive": true}

missive_list_conv := "list_all_missive_conversations"

# --- the switch --------------------------------------------------------------------------------

test_missive_pack_off_without_params if {
	missive_allowed(missive_list_conv, {}, {})
	missive_allowed("create_a_missive_draft", {"send": true}, {})
	missive_allowed("delete_a_missive_post_by_id", {"id": "p-1"}, {"hidden_tools": []})
}

test_missive_pack_on_by_any_of_its_params if {
	not missive_allowed(missive_list_conv, {}, {"max_limit": 50})
	not missive_allowed("create_a_missive_draft", {"send": true}, {"allow_delete": []})
}

test_missive_pack_off_by_missive_false if {
	missive_allowed(missive_list_conv, {}, {"missive": false, "max_limit": 50})
	missive_allowed("create_a_missive_draft", {"send": true, "limit": 100}, {"missive": false, "max_limit": 50})
}

# --- 1. mailbox filter -------------------------------------------------------------------------

test_missive_mailbox_filter_one_allows if {
	missive_allowed(missive_list_conv, {"inbox": true}, missive_on_params)
	missive_allowed(missive_list_conv, {"closed": true, "limit": 25}, missive_on_params)
	missive_allowed(missive_list_conv, {"shared_label": "l-1", "inbox": false}, missive_on_params)
	missive_allowed(missive_list_conv, {"team_all": "t-1", "organization": "o-1"}, missive_on_params)
}

test_missive_mailbox_filter_missing_denies if {
	missive_reasons(missive_list_conv, {}, missive_on_params) == [missive_no_filter_msg]
	not missive_allowed(missive_list_conv, {"inbox": false, "shared_label": ""}, missive_on_params)
	not missive_allowed(missive_list_conv, {"organization": "o-1"}, missive_on_params)
	missive_reasons(missive_list_conv, {"inbox": null, "team_all": null, "drafts": false}, missive_on_params) == [missive_no_filter_msg]
}

missive_no_filter_msg := concat("", [
	"list_all_missive_conversations needs exactly one mailbox filter: add one of the arguments ",
	"inbox, all, assigned, closed, snoozed, flagged, trashed, junked or drafts (set to true), ",
	"or shared_label, team_inbox, team_closed or team_all (set to an id), e.g. {\"inbox\": true}",
])

test_missive_mailbox_filter_two_denies if {
	missive_reasons(missive_list_conv, {"inbox": true, "team_inbox": "t-1"}, missive_on_params) == [
		"list_all_missive_conversations takes exactly one mailbox filter, but this call sets 2 (inbox, team_inbox): keep one of them and remove the others",
	]
}

test_missive_mailbox_filter_only_for_listing_conversations if {
	missive_allowed("list_all_missive_tasks", {}, missive_on_params)
	missive_allowed("list_all_missive_conversation_messages", {"id": "c-1"}, missive_on_params)
	missive_allowed("list_all_missive_tasks", {"inbox": "yes", "team_all": 5}, missive_on_params)
}

missive_flags := ["inbox", "all", "assigned", "closed", "snoozed", "flagged", "trashed", "junked", "drafts"]

missive_id_filters := ["shared_label", "team_inbox", "team_closed", "team_all"]

# Not exactly true, false or null: the upstream coerces most of them (pydantic: "false", "no", 0
# are false; "yes", 1, "on" are true), the policy refuses them all.
missive_unsafe_flags := [
	"false", "true", "yes", "no", "on", "off", "True", "False", "t", "f", "y", "n", "1", "0", "",
	1, 0, 1.0, 0.0, -1, 2, [], [true], {}, {"inbox": true}, "null",
]

test_missive_mailbox_flag_red_team_denied if {
	every key in missive_flags {
		every v in missive_unsafe_flags {
			# Beside a valid filter, so the malformed flag is the only reason.
			rs := missive_reasons(missive_list_conv, {key: v, "shared_label": "l-1"}, missive_on_params)
			count(rs) == 1
			startswith(rs[0], sprintf("list_all_missive_conversations: %s must be true, false or absent; got ", [key]))
			not missive_allowed(missive_list_conv, {key: v}, missive_on_params)
		}
	}
}

test_missive_mailbox_flag_reasons_say_what_was_found if {
	missive_reasons(missive_list_conv, {"inbox": "false", "team_all": "t-1"}, missive_on_params) == [
		"list_all_missive_conversations: inbox must be true, false or absent; got \"false\"",
	]
	missive_reasons(missive_list_conv, {"closed": 1, "team_all": "t-1"}, missive_on_params) == [
		"list_all_missive_conversations: closed must be true, false or absent; got 1",
	]
	missive_reasons(missive_list_conv, {"all": [], "team_all": "t-1"}, missive_on_params) == [
		"list_all_missive_conversations: all must be true, false or absent; got a list",
	]
	# Alone, the malformed flag sets nothing: the call has no filter either.
	missive_reasons(missive_list_conv, {"inbox": "yes"}, missive_on_params) == [
		missive_no_filter_msg,
		"list_all_missive_conversations: inbox must be true, false or absent; got \"yes\"",
	]
}

test_missive_mailbox_flag_table_safe_allowed if {
	every key in missive_flags {
		missive_allowed(missive_list_conv, {key: true}, missive_on_params)
		every v in [false, null] {
			missive_allowed(missive_list_conv, {key: v, "team_all": "t-1"}, missive_on_params)
		}
	}
}

missive_unsafe_ids := [1, 0, 1.5, true, false, [], ["t-1"], [""], {}, {"id": "t-1"}]

test_missive_mailbox_id_red_team_denied if {
	every key in missive_id_filters {
		every v in missive_unsafe_ids {
			rs := missive_reasons(missive_list_conv, {key: v, "inbox": true}, missive_on_params)
			count(rs) == 1
			startswith(rs[0], sprintf("list_all_missive_conversations: %s must be an id (a non-empty string) or absent; got ", [key]))
		}
	}
	missive_reasons(missive_list_conv, {"team_inbox": 7, "inbox": true}, missive_on_params) == [
		"list_all_missive_conversations: team_inbox must be an id (a non-empty string) or absent; got 7",
	]
	missive_reasons(missive_list_conv, {"shared_label": {"id": "l-1"}, "inbox": true}, missive_on_params) == [
		"list_all_missive_conversations: shared_label must be an id (a non-empty string) or absent; got an object",
	]
}

test_missive_mailbox_id_table_safe_allowed if {
	every key in missive_id_filters {
		missive_allowed(missive_list_conv, {key: "x-1"}, missive_on_params)
		every v in ["", null] {
			missive_allowed(missive_list_conv, {key: v, "inbox": true}, missive_on_params)
		}
	}
}

# "Exactly one" counts only the filters that are set: true, or a non-empty string.
test_missive_mailbox_filter_two_counts_only_set_filters if {
	missive_allowed(missive_list_conv, {"inbox": true, "all": false, "closed": null, "team_all": ""}, missive_on_params)
	missive_reasons(missive_list_conv, {"drafts": true, "shared_label": "l-1", "all": true}, missive_on_params) == [
		"list_all_missive_conversations takes exactly one mailbox filter, but this call sets 3 (all, drafts, shared_label): keep one of them and remove the others",
	]
}

# --- 2. shared_labels / teams ------------------------------------------------------------------

missive_vip := {"shared_labels": ["vip", "l-9"]}

missive_team := {"teams": ["t-1"]}

test_missive_shared_labels_listing_in_scope_allows if {
	missive_allowed(missive_list_conv, {"shared_label": "vip"}, missive_vip)
	missive_allowed(missive_list_conv, {"shared_label": "l-9", "limit": 10}, missive_vip)
	missive_allowed(missive_list_conv, {"shared_label": "vip"}, {"shared_labels": "vip"})
	missive_allowed(missive_list_conv, {"shared_label": "vip", "inbox": false, "team_all": null}, missive_vip)
}

test_missive_shared_labels_listing_out_of_scope_denies if {
	missive_reasons(missive_list_conv, {"inbox": true}, missive_vip) == [
		"server missive may list conversations only within its shared labels or teams: filter by shared_label set to one of: l-9, vip (and by nothing else)",
	]
	not missive_allowed(missive_list_conv, {"shared_label": "other"}, missive_vip)
	not missive_allowed(missive_list_conv, {"team_inbox": "t-1"}, missive_vip)
	count(missive_reasons(missive_list_conv, {}, missive_vip)) == 2 # no filter at all: both rules say so
}

missive_scope_msg_vip := "server missive may list conversations only within its shared labels or teams: filter by shared_label set to one of: l-9, vip (and by nothing else)"

# Exact strings only: another spelling, a number, a list or an object is outside the scope.
missive_unsafe_labels := ["VIP", "Vip", " vip", "vip ", "vip,l-9", "vip\u0000", "", "other", 1, true, false, ["vip"], {"id": "vip"}]

test_missive_shared_labels_listing_red_team_denied if {
	every v in missive_unsafe_labels {
		missive_scope_msg_vip in missive_reasons(missive_list_conv, {"shared_label": v}, missive_vip)
	}
	# An in-scope label beside any other filter, valid or not, is not "within the scope".
	every extra in [{"inbox": true}, {"inbox": "yes"}, {"inbox": 1}, {"team_all": "t-1"}, {"team_all": 5}, {"shared_label": "vip", "all": "false"}] {
		missive_scope_msg_vip in missive_reasons(missive_list_conv, object.union({"shared_label": "vip"}, extra), missive_vip)
	}
}

test_missive_teams_listing_scope if {
	missive_allowed(missive_list_conv, {"team_inbox": "t-1"}, missive_team)
	missive_allowed(missive_list_conv, {"team_closed": "t-1"}, missive_team)
	missive_allowed(missive_list_conv, {"team_all": "t-1"}, missive_team)
	not missive_allowed(missive_list_conv, {"team_all": "t-2"}, missive_team)
	not missive_allowed(missive_list_conv, {"all": true}, missive_team)
	both := object.union(missive_vip, missive_team)
	missive_allowed(missive_list_conv, {"shared_label": "vip"}, both)
	missive_allowed(missive_list_conv, {"team_inbox": "t-1"}, both)
	missive_reasons(missive_list_conv, {"assigned": true}, both) == [
		"server missive may list conversations only within its shared labels or teams: filter by shared_label set to one of: l-9, vip, or team_inbox, team_closed or team_all set to one of: t-1 (and by nothing else)",
	]
	# A team id is not a label id, nor the reverse.
	not missive_allowed(missive_list_conv, {"shared_label": "t-1"}, missive_team)
	not missive_allowed(missive_list_conv, {"team_inbox": "vip"}, both)
}

test_missive_teams_listing_red_team_denied if {
	every key in missive_team_filters_list {
		every v in ["T-1", " t-1", "t-1 ", "", "t-2", 1, true, ["t-1"], {"id": "t-1"}] {
			not missive_allowed(missive_list_conv, {key: v}, missive_team)
		}
	}
}

missive_team_filters_list := ["team_inbox", "team_closed", "team_all"]

# A label or team list from the config that holds a number matches no argument: arguments must be
# strings, and 5 is not "5".
test_missive_shared_labels_scope_compares_strings_only if {
	not missive_allowed(missive_list_conv, {"shared_label": 5}, {"shared_labels": [5]})
	not missive_allowed(missive_list_conv, {"shared_label": "5"}, {"shared_labels": [5]})
	not missive_allowed("create_a_missive_post", {"text": "t", "add_shared_labels": [5]}, {"shared_labels": [5]})
}

test_missive_shared_labels_empty_list_confines_to_nothing if {
	missive_reasons(missive_list_conv, {"inbox": true}, {"shared_labels": []}) == [
		"server missive may not list conversations: it is confined to an empty list of shared labels and teams",
	]
}

test_missive_shared_labels_writes_in_scope_allow if {
	missive_allowed("create_a_missive_post", {"conversation": "c-1", "text": "t", "add_shared_labels": ["vip"]}, missive_vip)
	missive_allowed("create_a_missive_post", {"conversation": "c-1", "text": "t"}, missive_vip)
	missive_allowed("create_a_missive_task", {"title": "t", "team": "t-1"}, missive_team)
	missive_allowed("create_a_missive_message", {"team": "t-1", "add_shared_labels": "vip"}, object.union(missive_vip, missive_team))
}

test_missive_shared_labels_writes_out_of_scope_deny if {
	missive_reasons("create_a_missive_post", {"conversation": "c-1", "add_shared_labels": ["vip", "spam", "junk"]}, missive_vip) == [
		"tool create_a_missive_post names shared labels server missive may not use (junk, spam): use only one of: l-9, vip, or leave the shared label out",
	]
	not missive_allowed("create_a_missive_draft", {"remove_shared_labels": ["x"]}, missive_vip)
	missive_reasons("create_a_missive_task", {"title": "t", "team": "t-2"}, missive_team) == [
		"tool create_a_missive_task names teams server missive may not use (t-2): use only one of: t-1, or leave the team out",
	]
	not missive_allowed("create_a_missive_message", {"team": "t-2"}, missive_team)
}

missive_label_args_list := ["shared_label", "shared_labels", "add_shared_labels", "remove_shared_labels"]

missive_team_args_list := ["team", "teams", "team_inbox", "team_closed", "team_all"]

# Every value, alone or in a list, that is not an in-scope string.
missive_unsafe_label_values := [
	"VIP", " vip", "", "spam", 1, 0, true, false, {}, {"id": "vip"}, {"vip": true},
	["VIP"], [1], ["vip", 1], [["vip"]], [{"id": "vip"}], [null], ["vip", ""], ["vip", "spam"],
]

test_missive_shared_labels_writes_red_team_denied if {
	every key in missive_label_args_list {
		every v in missive_unsafe_label_values {
			not missive_allowed("update_a_missive_conversation_by_id", {"id": "c-1", key: v}, missive_vip)
		}
	}
	every key in missive_team_args_list {
		every v in ["T-1", " t-1", "", "t-2", 1, true, {}, {"id": "t-1"}, [1], [["t-1"]], ["t-1", null], ["t-1", "t-2"]] {
			not missive_allowed("update_a_missive_conversation_by_id", {"id": "c-1", key: v}, missive_team)
		}
	}
	missive_reasons("create_a_missive_post", {"text": "t", "add_shared_labels": ["vip", 5, ["l-9"], {"id": "vip"}, ""]}, missive_vip) == [
		"tool create_a_missive_post names shared labels server missive may not use (\"\", 5, a list, an object): use only one of: l-9, vip, or leave the shared label out",
	]
}

test_missive_shared_labels_writes_table_safe_allowed if {
	every key in missive_label_args_list {
		every v in ["vip", ["vip"], ["vip", "l-9"], [], null] {
			missive_allowed("update_a_missive_conversation_by_id", {"id": "c-1", key: v}, missive_vip)
		}
	}
	every key in missive_team_args_list {
		every v in ["t-1", ["t-1"], [], null] {
			missive_allowed("update_a_missive_conversation_by_id", {"id": "c-1", key: v}, missive_team)
		}
	}
}

# Custom tools change Missive as writes do: their label and team arguments are confined too.
test_missive_shared_labels_writes_include_custom_tools if {
	not missive_allowed("merge_missive_conversations", {"id": "c-1", "target": "c-2", "team": "t-2"}, missive_team)
	missive_allowed("merge_missive_conversations", {"id": "c-1", "target": "c-2", "team": "t-1"}, missive_team)
	missive_allowed("merge_missive_conversations", {"id": "c-1", "target": "c-2"}, missive_team)
}

test_missive_shared_labels_reads_not_confined if {
	# Reads other than listing conversations name no label the policy could check.
	missive_allowed("list_all_missive_tasks", {"team": "t-2"}, missive_team)
}

# --- 3. drafts: not sent unless allow_send -----------------------------------------------------

missive_send_msg(found) := sprintf(
	"tool create_a_missive_draft would send the email (%s), and server missive only writes drafts: remove send and send_at to save the draft for a human to review and send",
	[found],
)

test_missive_drafts_saved_allowed if {
	missive_allowed("create_a_missive_draft", {"conversation": "c-1", "body": "Hello"}, missive_on_params)
	missive_allowed("create_a_missive_draft", {"send": false, "send_at": null}, missive_on_params)
}

test_missive_drafts_send_denied if {
	missive_reasons("create_a_missive_draft", {"body": "Hello", "send": true}, missive_on_params) == [missive_send_msg("send: true")]
	missive_reasons("create_a_missive_draft", {"send": "true", "send_at": 1800000000}, missive_on_params) == [
		missive_send_msg("send: \"true\", send_at: 1800000000"),
	]
	missive_reasons("create_a_missive_draft", {"send_at": 1800000000}, missive_on_params) == [missive_send_msg("send_at: 1800000000")]
}

# The red-team list: every value but absent, null and false. pydantic (lax) makes true of 1, 1.0,
# "1", "yes", "on", "True", "t", "y", "true" and false of "false", "no", 0; the rest it refuses or
# another upstream reads its own way. The policy does not guess: it refuses them all.
missive_unsafe_sends := [
	true, "true", 1, 1.0, "yes", "on", "True", "t", "y", "1", "false", 0, "", [], {}, "no",
	"TRUE", "Yes", "ON", "T", "Y", "0", "off", "f", "n", "False", 0.0, -1, 2, 0.5, " true", "true ",
	"null", "send", [true], [false], {"send": true}, {"value": false},
]

missive_safe_sends := [null, false]

test_missive_drafts_send_table_unsafe_denied if {
	every v in missive_unsafe_sends {
		not missive_allowed("create_a_missive_draft", {"body": "b", "send": v}, missive_on_params)
		not missive_allowed("create_a_missive_draft", {"body": "b", "send": v}, {"missive": true, "allow_send": "yes"})
	}
}

test_missive_drafts_send_table_safe_allowed if {
	missive_allowed("create_a_missive_draft", {"body": "b"}, missive_on_params)
	every v in missive_safe_sends {
		missive_allowed("create_a_missive_draft", {"body": "b", "send": v}, missive_on_params)
		missive_allowed("create_a_missive_draft", {"body": "b", "send": v, "send_at": null}, missive_on_params)
	}
}

test_missive_drafts_send_reasons_say_what_was_found if {
	every pair in [
		[true, "send: true"], ["true", "send: \"true\""], [1, "send: 1"], [1.0, "send: 1"], ["yes", "send: \"yes\""],
		["on", "send: \"on\""], ["True", "send: \"True\""], ["t", "send: \"t\""], ["y", "send: \"y\""],
		["1", "send: \"1\""], ["false", "send: \"false\""], [0, "send: 0"], ["", "send: \"\""],
		[[], "send: a list"], [{}, "send: an object"], ["no", "send: \"no\""], [0.5, "send: 0.5"],
		[12345678.5, "send: a number"],
	] {
		missive_reasons("create_a_missive_draft", {"body": "b", "send": pair[0]}, missive_on_params) == [missive_send_msg(pair[1])]
	}
}

# send_at: absent or null only. A timestamp schedules the email; 0, "", false and the rest are
# not left to the upstream to interpret.
missive_unsafe_send_ats := [1800000000, 0, -1, 1.5, "2026-12-01T09:00:00Z", "1800000000", "", "null", false, true, [], {}]

test_missive_drafts_send_at_table if {
	every v in missive_unsafe_send_ats {
		not missive_allowed("create_a_missive_draft", {"body": "b", "send_at": v}, missive_on_params)
		not missive_allowed("create_a_missive_draft", {"body": "b", "send": false, "send_at": v}, missive_on_params)
	}
	missive_allowed("create_a_missive_draft", {"body": "b", "send_at": null}, missive_on_params)
	missive_reasons("create_a_missive_draft", {"send_at": "tomorrow"}, missive_on_params) == [missive_send_msg("send_at: \"tomorrow\"")]
}

test_missive_drafts_send_allowed_by_allow_send if {
	missive_allowed("create_a_missive_draft", {"send": true}, {"allow_send": true})
	not missive_allowed("create_a_missive_draft", {"send": true}, {"allow_send": "yes"})
	not missive_allowed("create_a_missive_draft", {"send": true}, {"allow_send": 1})
	every v in array.concat(missive_unsafe_sends, missive_unsafe_send_ats) {
		missive_allowed("create_a_missive_draft", {"body": "b", "send": v}, {"allow_send": true})
	}
	# A post has no `send`: the rule is for drafts only.
	missive_allowed("create_a_missive_post", {"send": true}, missive_on_params)
}

# --- 4. deletes only when listed in allow_delete -----------------------------------------------

test_missive_delete_denied_by_default if {
	missive_reasons("delete_a_missive_post_by_id", {"id": "p-1"}, missive_on_params) == [
		"tool delete_a_missive_post_by_id deletes, and server missive does not allow deleting with it (it is not in allow_delete): do not delete; ask a human to do it",
	]
	not missive_allowed("delete_a_missive_hook_by_id", {"id": "h-1"}, {"allow_delete": ["delete_a_missive_post_by_id"]})
	not missive_allowed("delete_a_missive_post_by_id", {"id": "p-1"}, {"allow_delete": true})
}

test_missive_delete_allowed_by_allow_delete if {
	missive_allowed("delete_a_missive_post_by_id", {"id": "p-1"}, {"allow_delete": ["delete_a_missive_post_by_id"]})
	missive_allowed("delete_a_missive_hook_by_id", {"id": "h-1"}, {"allow_delete": "delete_a_missive_hook_by_id"})
}

# --- 5. max_limit ------------------------------------------------------------------------------

test_missive_max_limit_at_or_below_allows if {
	missive_allowed(missive_list_conv, {"inbox": true, "limit": 50}, {"max_limit": 50})
	missive_allowed(missive_list_conv, {"inbox": true}, {"max_limit": 50})
	missive_allowed(missive_list_conv, {"inbox": true, "limit": null}, {"max_limit": 50})
	missive_allowed("list_all_missive_tasks", {"limit": 20}, {"max_limit": 50})
}

test_missive_max_limit_above_denies if {
	missive_reasons(missive_list_conv, {"inbox": true, "limit": 200}, {"max_limit": 50}) == [
		"tool list_all_missive_conversations asks for limit 200, above the largest limit server missive allows (50): ask for at most 50 and page through the rest",
	]
	not missive_allowed("list_all_missive_tasks", {"limit": 51}, {"max_limit": 50})
	missive_reasons("list_all_missive_tasks", {"limit": 200.0}, {"max_limit": 50}) == [
		"tool list_all_missive_tasks asks for limit 200, above the largest limit server missive allows (50): ask for at most 50 and page through the rest",
	]
}

test_missive_max_limit_not_a_number_is_off if {
	missive_allowed(missive_list_conv, {"inbox": true, "limit": 200}, {"max_limit": "50"})
}

missive_limit_msg(found) := sprintf("tool list_all_missive_tasks: limit must be a whole number from 1 to 25; got %s", [found])

# The red-team list: strings the upstream reads as numbers ("+200", " 200", "0200", "200_000"),
# even in range ("25"), booleans (true is 1 to pydantic), 0, negatives, fractions, lists, objects.
missive_unsafe_limits := [
	"+200", " 200", "200 ", "0200", "200_000", "25", "1", "", "2e1", "0x10", "twenty", true, false,
	0, -1, -25, 0.5, 2.5, 25.5, 26, 200, 1e3, 12345678901234567890, [], [5], {}, {"limit": 5},
]

test_missive_max_limit_table_unsafe_denied if {
	every v in missive_unsafe_limits {
		not missive_allowed("list_all_missive_tasks", {"limit": v}, {"max_limit": 25})
		count(missive_reasons("list_all_missive_tasks", {"limit": v}, {"max_limit": 25})) == 1
	}
}

test_missive_max_limit_table_safe_allowed if {
	missive_allowed("list_all_missive_tasks", {}, {"max_limit": 25})
	every v in [null, 1, 1.0, 10, 24, 25, 25.0] {
		missive_allowed("list_all_missive_tasks", {"limit": v}, {"max_limit": 25})
	}
}

test_missive_max_limit_reasons_say_what_was_found if {
	every pair in [
		["+200", "\"+200\""], [" 200", "\" 200\""], ["0200", "\"0200\""], ["200_000", "\"200_000\""],
		["25", "\"25\""], [true, "true"], [false, "false"], [0, "0"], [-3, "-3"], [2.5, "2.5"],
		[[], "a list"], [{}, "an object"],
	] {
		missive_reasons("list_all_missive_tasks", {"limit": pair[0]}, {"max_limit": 25}) == [missive_limit_msg(pair[1])]
	}
}

# --- the call itself ---------------------------------------------------------------------------

# The proxy always passes arguments as an object; an input with anything else is refused once the
# pack is on, not exempted from its rules.
test_missive_arguments_not_an_object_denied if {
	every args in [null, [], "send", 1] {
		inp := object.union(missive_input("create_a_missive_draft", {}, missive_on_params), {"tool": {"arguments": args}})
		d := authz.decision with input as inp
		d.reasons == ["tool create_a_missive_draft: the call's arguments are not an object, so server missive cannot check them"]
	}
	inp := object.remove(missive_input("create_a_missive_draft", {}, missive_on_params), ["tool"])
	d := authz.decision with input as object.union(inp, {"tool": {"name": "create_a_missive_draft", "method": "create", "access": "write", "tags": ["drafts"]}})
	d.allow == false
}

# --- visibility is untouched: denied calls stay visible (a tool error the model can read) ------

test_missive_denials_keep_the_tool_visible if {
	d := missive_decide("create_a_missive_draft", {"send": true}, missive_on_params)
	d.allow == false
	d.visible_tools == ["create_a_missive_draft"]
}

# The mailbox filters are spelled out three times in missive.rego (ordered lists for messages,
# literal sets and a literal object for speed): they must name the same filters.
test_missive_filter_spellings_agree if {
	{k | some k in authz.missive_mailbox_flags} == authz.missive_mailbox_flag_keys
	{k | some k in authz.missive_mailbox_ids} == authz.missive_mailbox_id_keys
	{k | some k in authz.missive_mailbox_filters} == {k | some k, _ in authz.missive_all_unset}
	count(authz.missive_mailbox_filters) == count(authz.missive_all_unset)
}

# A call naming several filters is told all of them, in the documented order.
test_missive_several_filters_are_listed_in_order if {
	inp := missive_input("list_all_missive_conversations", {"team_all": "t1", "inbox": true, "closed": true},
		{"missive": true})
	some msg in authz.deny with input as inp
	contains(msg, "sets 3 (inbox, closed, team_all)")
}
