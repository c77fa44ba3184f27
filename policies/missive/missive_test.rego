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

# The decision for a tools/call of `name` (classified by the catalog) with `arguments`.
missive_decide(name, arguments, params) := d if {
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
	d := authz.decision with input as inp
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
	missive_reasons(missive_list_conv, {}, missive_on_params) == [concat("", [
		"list_all_missive_conversations needs exactly one mailbox filter: add one of the arguments ",
		"inbox, all, assigned, closed, snoozed, flagged, trashed, junked or drafts (set to true), ",
		"or shared_label, team_inbox, team_closed or team_all (set to an id), e.g. {\"inbox\": true}",
	])]
	not missive_allowed(missive_list_conv, {"inbox": false, "shared_label": ""}, missive_on_params)
	not missive_allowed(missive_list_conv, {"organization": "o-1"}, missive_on_params)
}

test_missive_mailbox_filter_two_denies if {
	missive_reasons(missive_list_conv, {"inbox": true, "team_inbox": "t-1"}, missive_on_params) == [
		"list_all_missive_conversations takes exactly one mailbox filter, but this call sets 2 (inbox, team_inbox): keep one of them and remove the others",
	]
}

test_missive_mailbox_filter_only_for_listing_conversations if {
	missive_allowed("list_all_missive_tasks", {}, missive_on_params)
	missive_allowed("list_all_missive_conversation_messages", {"id": "c-1"}, missive_on_params)
}

# --- 2. shared_labels / teams ------------------------------------------------------------------

missive_vip := {"shared_labels": ["vip", "l-9"]}

missive_team := {"teams": ["t-1"]}

test_missive_shared_labels_listing_in_scope_allows if {
	missive_allowed(missive_list_conv, {"shared_label": "vip"}, missive_vip)
	missive_allowed(missive_list_conv, {"shared_label": "l-9", "limit": 10}, missive_vip)
	missive_allowed(missive_list_conv, {"shared_label": "vip"}, {"shared_labels": "vip"})
}

test_missive_shared_labels_listing_out_of_scope_denies if {
	missive_reasons(missive_list_conv, {"inbox": true}, missive_vip) == [
		"server missive may list conversations only within its shared labels or teams: filter by shared_label set to one of: l-9, vip (and by nothing else)",
	]
	not missive_allowed(missive_list_conv, {"shared_label": "other"}, missive_vip)
	not missive_allowed(missive_list_conv, {"team_inbox": "t-1"}, missive_vip)
	count(missive_reasons(missive_list_conv, {}, missive_vip)) == 2 # no filter at all: both rules say so
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

test_missive_shared_labels_reads_not_confined if {
	# Reads other than listing conversations name no label the policy could check.
	missive_allowed("list_all_missive_tasks", {"team": "t-2"}, missive_team)
}

# --- 3. drafts: not sent unless allow_send -----------------------------------------------------

test_missive_drafts_saved_allowed if {
	missive_allowed("create_a_missive_draft", {"conversation": "c-1", "body": "Hello"}, missive_on_params)
	missive_allowed("create_a_missive_draft", {"send": false, "send_at": null}, missive_on_params)
}

test_missive_drafts_send_denied if {
	missive_reasons("create_a_missive_draft", {"body": "Hello", "send": true}, missive_on_params) == [
		"tool create_a_missive_draft would send the email (send: true), and server missive only writes drafts: remove send and send_at to save the draft for a human to review and send",
	]
	missive_reasons("create_a_missive_draft", {"send": "true", "send_at": 1800000000}, missive_on_params) == [
		"tool create_a_missive_draft would send the email (send: true, send_at), and server missive only writes drafts: remove send and send_at to save the draft for a human to review and send",
	]
	not missive_allowed("create_a_missive_draft", {"send_at": 1800000000}, missive_on_params)
}

test_missive_drafts_send_allowed_by_allow_send if {
	missive_allowed("create_a_missive_draft", {"send": true}, {"allow_send": true})
	not missive_allowed("create_a_missive_draft", {"send": true}, {"allow_send": "yes"})
	# A post has no `send`: the rule is for drafts only.
	missive_allowed("create_a_missive_post", {"send": true}, missive_on_params)
}

# --- 4. deletes only when listed in allow_delete -----------------------------------------------

test_missive_delete_denied_by_default if {
	missive_reasons("delete_a_missive_post_by_id", {"id": "p-1"}, missive_on_params) == [
		"tool delete_a_missive_post_by_id deletes, and server missive does not allow deleting with it (it is not in allow_delete): do not delete; ask a human to do it",
	]
	not missive_allowed("delete_a_missive_hook_by_id", {"id": "h-1"}, {"allow_delete": ["delete_a_missive_post_by_id"]})
}

test_missive_delete_allowed_by_allow_delete if {
	missive_allowed("delete_a_missive_post_by_id", {"id": "p-1"}, {"allow_delete": ["delete_a_missive_post_by_id"]})
	missive_allowed("delete_a_missive_hook_by_id", {"id": "h-1"}, {"allow_delete": "delete_a_missive_hook_by_id"})
}

# --- 5. max_limit ------------------------------------------------------------------------------

test_missive_max_limit_at_or_below_allows if {
	missive_allowed(missive_list_conv, {"inbox": true, "limit": 50}, {"max_limit": 50})
	missive_allowed(missive_list_conv, {"inbox": true}, {"max_limit": 50})
	missive_allowed("list_all_missive_tasks", {"limit": "20"}, {"max_limit": 50})
}

test_missive_max_limit_above_denies if {
	missive_reasons(missive_list_conv, {"inbox": true, "limit": 200}, {"max_limit": 50}) == [
		"tool list_all_missive_conversations asks for limit 200, above the largest limit server missive allows (50): ask for at most 50 and page through the rest",
	]
	not missive_allowed("list_all_missive_tasks", {"limit": "51"}, {"max_limit": 50})
}

test_missive_max_limit_not_a_number_is_off if {
	missive_allowed(missive_list_conv, {"inbox": true, "limit": 200}, {"max_limit": "50"})
}

# --- visibility is untouched: denied calls stay visible (a tool error the model can read) ------

test_missive_denials_keep_the_tool_visible if {
	d := missive_decide("create_a_missive_draft", {"send": true}, missive_on_params)
	d.allow == false
	d.visible_tools == ["create_a_missive_draft"]
}
