# Unit tests of policies/mcp/authz.rego: `mcp-policy-proxy policy test policies` (or `opa test
# policies`) runs every test_* rule below. Inputs follow docs/policy-input.md (v1).
package mcp.authz_test

import rego.v1

import data.mcp.authz

# --- Fixtures ----------------------------------------------------------------------------------

server := {
	"name": "triage",
	"methods": ["read"],
	"tags": [],
	"require_api_token_auth": false,
	"expires_at": null,
	"params": {},
}

principal := {"authenticated": true, "via": ["url_token"], "subject": "agent-7", "claims": {}, "scopes": []}

with_server(changes) := object.union(server, changes)

message(kind, direction, method) := {
	"version": 1,
	"time": "2026-11-23T20:00:00Z",
	"server": server,
	"principal": principal,
	"transport": {"kind": "streamable_http", "protocol_version": "2025-11-25", "http_method": "POST", "origin": null},
	"message": {"kind": kind, "direction": direction, "method": method, "name": null},
}

request(method) := message("request", "client_to_server", method)

call(tool) := object.union(request("tools/call"), {"message": {"name": tool.name}, "tool": tool})

page(tools) := object.union(message("response", "server_to_client", "tools/list"), {"tools": tools})

list_conversations := {"name": "list_all_missive_conversations", "method": "list", "access": "read", "tags": ["conversations"]}

get_conversation := {"name": "get_single_missive_conversation_by_id", "method": "get", "access": "read", "tags": ["conversations"]}

create_post := {"name": "create_a_missive_post", "method": "create", "access": "write", "tags": ["posts", "conversations"]}

update_contact := {"name": "update_a_missive_contact_by_id", "method": "update", "access": "write", "tags": ["contacts"]}

delete_contact := {"name": "delete_a_missive_contact_by_id", "method": "delete", "access": "write", "tags": ["contacts"]}

merge := {"name": "merge_missive_conversations", "method": "merge", "access": "custom", "tags": ["conversations"]}

archive := {"name": "archive_everything", "method": "archive_everything", "access": "custom", "tags": []}

list_users := {"name": "list_all_missive_users", "method": "list", "access": "read", "tags": ["users"]}

all_tools := [list_conversations, get_conversation, create_post, update_contact, delete_contact, merge, archive, list_users]

# The decision for `inp` under `srv`.
decide(inp, srv) := d if {
	d := authz.decision with input as object.union(inp, {"server": srv})
}

allowed(inp, srv) if decide(inp, srv).allow == true

# The names of all_tools a tools/list page shows under `srv`.
shown(srv) := decide(page(all_tools), srv).visible_tools

# A tools/call is allowed and the tool visible.
callable(tool, srv) if {
	d := decide(call(tool), srv)
	d.allow == true
	d.visible_tools == [tool.name]
}

# A tools/call is denied and the tool hidden (the client gets "Unknown tool").
hidden(tool, srv) if {
	d := decide(call(tool), srv)
	d.allow == false
	d.visible_tools == []
}

# --- methods -----------------------------------------------------------------------------------

test_methods_read_is_list_and_get if {
	shown(server) == ["list_all_missive_conversations", "get_single_missive_conversation_by_id", "list_all_missive_users"]
	callable(list_conversations, server)
	callable(get_conversation, server)
	hidden(create_post, server)
}

test_methods_write_is_create_update_delete if {
	srv := with_server({"methods": ["write"]})
	shown(srv) == ["create_a_missive_post", "update_a_missive_contact_by_id", "delete_a_missive_contact_by_id"]
	callable(create_post, srv)
	callable(delete_contact, srv)
	hidden(list_conversations, srv)
}

test_methods_custom_is_every_custom_tool if {
	srv := with_server({"methods": ["custom"]})
	shown(srv) == ["merge_missive_conversations", "archive_everything"]
	callable(merge, srv)
	hidden(get_conversation, srv)
}

test_methods_specific_crud_method if {
	srv := with_server({"methods": ["get", "create"]})
	shown(srv) == ["get_single_missive_conversation_by_id", "create_a_missive_post"]
	hidden(list_conversations, srv)
	hidden(update_contact, srv)
}

test_methods_named_custom_method if {
	srv := with_server({"methods": ["merge"]})
	shown(srv) == ["merge_missive_conversations"]
	callable(merge, srv)
	hidden(archive, srv)
}

test_methods_empty_allows_no_tool if {
	srv := with_server({"methods": []})
	shown(srv) == []
	hidden(list_conversations, srv)
	decide(call(list_conversations), srv).reasons == ["list is not among the methods of server triage (none)"]
}

test_methods_reason_names_method_and_server if {
	decide(call(create_post), server).reasons == ["create is not among the methods of server triage (read)"]
}

# A custom tool whose name is an access level does not get that access level.
test_methods_custom_tool_named_like_an_access_level if {
	tool := {"name": "read", "method": "read", "access": "custom", "tags": []}
	hidden(tool, server)
	callable(tool, with_server({"methods": ["custom"]}))
}

# --- tags --------------------------------------------------------------------------------------

test_tags_tool_needs_one_of_them if {
	srv := with_server({"methods": ["read", "write"], "tags": ["conversations"]})
	shown(srv) == ["list_all_missive_conversations", "get_single_missive_conversation_by_id", "create_a_missive_post"]
	callable(create_post, srv)
	hidden(update_contact, srv)
}

test_tags_reason_names_tool_and_tags if {
	srv := with_server({"tags": ["contacts", "users"]})
	decide(call(list_conversations), srv).reasons == [
		"tool list_all_missive_conversations has none of the tags of server triage (contacts, users)",
	]
}

test_tags_empty_allows_every_tag if {
	srv := with_server({"methods": ["read", "write", "custom"], "tags": []})
	shown(srv) == [t.name | some t in all_tools]
}

test_tags_untagged_tool_hidden_when_tags_are_set if {
	srv := with_server({"methods": ["custom"], "tags": ["conversations"]})
	shown(srv) == ["merge_missive_conversations"]
	hidden(archive, srv)
}

test_tags_and_methods_both_say_why if {
	srv := with_server({"tags": ["contacts"]})
	decide(call(create_post), srv).reasons == [
		"create is not among the methods of server triage (read)",
		"tool create_a_missive_post has none of the tags of server triage (contacts)",
	]
}

# --- expires_at --------------------------------------------------------------------------------

test_expiry_before_the_instant_allows if {
	allowed(request("ping"), with_server({"expires_at": "2026-11-23T20:00:01Z"}))
	callable(list_conversations, with_server({"expires_at": "2026-11-23T20:00:01Z"}))
}

test_expiry_at_the_instant_denies if {
	d := decide(request("ping"), with_server({"expires_at": "2026-11-23T20:00:00Z"}))
	d.allow == false
	d.reasons == ["server triage expired at 2026-11-23T20:00:00Z"]
}

test_expiry_after_the_instant_denies_everything if {
	srv := with_server({"expires_at": "2026-01-01T00:00:00Z"})
	every method in ["initialize", "ping", "notifications/initialized", "tools/list", "resources/read"] {
		not allowed(request(method), srv)
	}
	not allowed(message("request", "server_to_client", "sampling/createMessage"), srv)
	not allowed(page(all_tools), srv)
}

# An expired server still tells a visible tool from a hidden one: the proxy answers the first with
# an error result carrying the reason, the second with "Unknown tool".
test_expiry_keeps_visibility if {
	d := decide(call(list_conversations), with_server({"expires_at": "2026-01-01T00:00:00Z"}))
	d.allow == false
	d.visible_tools == ["list_all_missive_conversations"]
}

test_expiry_null_never_expires if {
	allowed(request("ping"), with_server({"expires_at": null}))
}

test_expiry_other_time_zones_compare_as_instants if {
	not allowed(request("ping"), with_server({"expires_at": "2026-11-23T21:00:00+02:00"}))
	allowed(request("ping"), with_server({"expires_at": "2026-11-23T16:00:00-05:00"}))
}

test_expiry_with_a_malformed_time_denies if {
	srv := with_server({"expires_at": "2026-12-31T23:59:59Z"})
	d := decide(object.union(request("ping"), {"time": "yesterday"}), srv)
	d.allow == false
	d.reasons == ["server triage has an expiry, but the time or the expiry is not RFC 3339"]
	not allowed(object.remove(request("ping"), ["time"]), srv)
}

# --- require_api_token_auth --------------------------------------------------------------------

with_via(inp, via) := object.union(inp, {"principal": {"authenticated": count(via) > 0, "via": via}})

test_token_auth_url_token_alone_is_not_enough if {
	srv := with_server({"require_api_token_auth": true})
	d := decide(with_via(request("ping"), ["url_token"]), srv)
	d.allow == false
	d.reasons == ["server triage requires a bearer token (JWT or API token); a URL token alone is not enough"]
}

test_token_auth_url_token_and_jwt if {
	allowed(with_via(request("ping"), ["url_token", "jwt"]), with_server({"require_api_token_auth": true}))
}

test_token_auth_api_token if {
	allowed(with_via(request("tools/list"), ["api_token"]), with_server({"require_api_token_auth": true}))
}

test_token_auth_anonymous_denied if {
	not allowed(with_via(request("initialize"), []), with_server({"require_api_token_auth": true}))
}

test_token_auth_off_lets_any_principal_through if {
	allowed(with_via(request("ping"), []), server)
	allowed(with_via(request("ping"), ["url_token"]), server)
}

test_token_auth_applies_to_tool_calls if {
	srv := with_server({"require_api_token_auth": true})
	d := decide(with_via(call(list_conversations), ["url_token"]), srv)
	d.allow == false
	d.visible_tools == ["list_all_missive_conversations"]
}

# --- housekeeping, listings, reads, tasks ------------------------------------------------------

test_housekeeping_allowed if {
	srv := with_server({"methods": [], "tags": ["nothing"]})
	every method in [
		"initialize", "ping", "server/discover", "subscriptions/listen",
		"logging/setLevel", "completion/complete",
	] {
		allowed(request(method), srv)
	}
}

test_notifications_allowed if {
	every method in ["notifications/initialized", "notifications/cancelled", "notifications/roots/list_changed"] {
		allowed(message("notification", "client_to_server", method), server)
	}
}

# A request (it carries an id) named notifications/… is not housekeeping: the upstream would act on
# it and answer. It is an unknown method, unless params.allow_methods lists it.
test_notifications_named_requests_denied if {
	every method in [
		"notifications/initialized", "notifications/cancelled", "notifications/roots/list_changed",
		"notifications/", "notifications/x", "notifications/tools/call",
	] {
		not allowed(request(method), server)
		decide(request(method), server).reasons == [sprintf("%s is not a method server triage allows", [method])]
	}
}

test_notifications_named_requests_allowed_by_allow_methods if {
	srv := with_server({"params": {"allow_methods": ["notifications/x"]}})
	allowed(request("notifications/x"), srv)
	not allowed(request("notifications/initialized"), srv)
	allowed(message("notification", "client_to_server", "notifications/initialized"), srv)
}

# Only the kind "notification" makes notifications/… housekeeping; a response named so is the
# client's answer (allowed by its own rule), and a kind the proxy never sends is not.
test_notifications_only_by_kind if {
	every kind in ["request", "Notification", "notifications", null, 1] {
		not allowed(message(kind, "client_to_server", "notifications/initialized"), server)
	}
}

test_listings_and_reads_allowed if {
	every method in [
		"tools/list", "resources/list", "resources/templates/list", "prompts/list",
		"resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/get",
	] {
		allowed(request(method), with_server({"methods": []}))
	}
}

test_tasks_allowed if {
	every method in ["tasks/get", "tasks/result", "tasks/list", "tasks/cancel"] {
		allowed(request(method), server)
	}
}

# --- tools/list pages --------------------------------------------------------------------------

test_tools_page_allowed_with_visible_tools if {
	d := decide(page(all_tools), with_server({"methods": ["list"], "tags": ["users", "contacts"]}))
	d.allow == true
	d.reasons == []
	d.visible_tools == ["list_all_missive_users"]
}

test_tools_page_keeps_the_upstream_order if {
	d := decide(page([list_users, merge, list_conversations]), with_server({"methods": ["read", "merge"]}))
	d.visible_tools == ["list_all_missive_users", "merge_missive_conversations", "list_all_missive_conversations"]
}

test_tools_page_empty if {
	d := decide(page([]), server)
	d.allow == true
	d.visible_tools == []
}

# --- tools/call --------------------------------------------------------------------------------

test_call_of_a_visible_tool if {
	d := decide(call(get_conversation), server)
	d == {"allow": true, "reasons": [], "visible_tools": ["get_single_missive_conversation_by_id"]}
}

test_call_of_a_hidden_tool if {
	d := decide(call(merge), server)
	d == {
		"allow": false,
		"reasons": ["merge is not among the methods of server triage (read)"],
		"visible_tools": [],
	}
}

test_call_without_a_tool_denied if {
	d := decide(request("tools/call"), server)
	d.allow == false
	d.reasons == ["tools/call without a tool"]
	d.visible_tools == []
}

test_params_hidden_tools if {
	srv := with_server({"params": {"hidden_tools": ["list_all_missive_users"]}})
	hidden(list_users, srv)
	decide(call(list_users), srv).reasons == ["tool list_all_missive_users is hidden from this client"]
	shown(srv) == ["list_all_missive_conversations", "get_single_missive_conversation_by_id"]
}

# --- unknown methods ---------------------------------------------------------------------------

test_unknown_method_denied if {
	d := decide(request("admin/shutdown"), server)
	d.allow == false
	d.reasons == ["admin/shutdown is not a method server triage allows"]
}

test_unknown_method_allowed_by_params_allow_methods if {
	srv := with_server({"params": {"allow_methods": ["admin/stats"]}})
	allowed(request("admin/stats"), srv)
	not allowed(request("admin/shutdown"), srv)
}

test_allow_methods_does_not_lift_expiry if {
	srv := with_server({"params": {"allow_methods": ["admin/stats"]}, "expires_at": "2020-01-01T00:00:00Z"})
	not allowed(request("admin/stats"), srv)
}

# --- server→client requests and the client's answers -------------------------------------------

test_server_to_client_requests_allowed if {
	every method in ["sampling/createMessage", "elicitation/create", "roots/list"] {
		allowed(message("request", "server_to_client", method), with_server({"methods": []}))
	}
}

test_client_responses_allowed if {
	allowed(message("response", "client_to_server", "sampling/createMessage"), server)
	allowed(message("response", "client_to_server", null), server) # the proxy lost track of the request
}

# The client may answer sampling/createMessage, not ask the server for it.
test_client_cannot_send_server_requests if {
	not allowed(request("sampling/createMessage"), server)
}

# --- malformed and minimal inputs: still a decision, and a denial ------------------------------

well_formed(d) if {
	is_boolean(d.allow)
	is_array(d.reasons)
	every r in d.reasons {
		is_string(r)
	}
	is_array(d.visible_tools)
}

test_malformed_empty_input_denies if {
	d := authz.decision with input as {}
	well_formed(d)
	d.allow == false
	"the policy input is not version 1" in d.reasons
	"the policy input has no server" in d.reasons
}

test_malformed_no_input_denies if {
	d := authz.decision
	well_formed(d)
	d.allow == false
}

test_malformed_version_only_denies if {
	d := authz.decision with input as {"version": 1}
	well_formed(d)
	d.allow == false
	"the policy input has no message" in d.reasons
}

test_malformed_other_version_denies if {
	d := authz.decision with input as object.union(request("ping"), {"version": 2})
	d.allow == false
	d.reasons == ["the policy input is not version 1"]
}

test_malformed_request_without_method_denies if {
	d := authz.decision with input as object.union(request("ping"), {"message": {"method": null}})
	well_formed(d)
	d.allow == false
	d.reasons == ["null is not a method server triage allows"]
}

test_malformed_tool_without_fields_denies if {
	inp := object.union(object.remove(call(get_conversation), ["tool"]), {"tool": {"name": "x"}})
	d := authz.decision with input as inp
	well_formed(d)
	d.allow == false
	d.visible_tools == []
}

test_malformed_tools_page_without_tools if {
	d := authz.decision with input as object.union(page([]), {"tools": null})
	d == {"allow": true, "reasons": [], "visible_tools": []}
	e := authz.decision with input as object.remove(page([]), ["tools"])
	e == {"allow": true, "reasons": [], "visible_tools": []}
}

test_malformed_principal_via_denies_under_token_auth if {
	inp := object.union(request("ping"), {"principal": {"via": "jwt"}})
	not allowed(inp, with_server({"require_api_token_auth": true}))
}

test_malformed_server_without_lists_hides_every_tool if {
	inp := object.union(object.remove(call(list_conversations), ["server"]), {"server": {"name": "bare"}})
	d := authz.decision with input as inp
	well_formed(d)
	d.allow == false
	d.visible_tools == []
}
