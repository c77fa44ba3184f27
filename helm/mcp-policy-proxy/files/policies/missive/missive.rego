# The Missive policy pack (docs/missive.md): deny rules for the tools of the Missive API
# (/work/shared/PROTOCOL.md §5), added to the default decision of policies/mcp/authz.rego.
#
# It is switched on per server through `input.server.params`:
#   missive: true        the pack's always-on rules (mailbox filter, no sending, no deleting);
#                        setting any of the params below switches them on as well, and
#                        `missive: false` switches the whole pack off;
#   shared_labels: [..]  ids or names: listing conversations and writes are confined to them;
#   teams: [..]          ids or names: likewise for teams;
#   allow_send: true     drafts may be sent (`send: true`, `send_at`);
#   allow_delete: [..]   the delete tools this server may call, by name;
#   max_limit: 50        the largest `limit` argument a call may carry.
# A server without any of them (params {}) is decided by the default policy alone.
#
# Every deny rule starts with `missive_call` (or `missive_on`), so a server without the pack pays one
# look-up per rule instead of evaluating the sets the rule reads (~50 µs per decision otherwise).
# Every rule reads `input` only, every name is prefixed `missive_` (rules of one package share a
# namespace across files), and every function is defined in this file only (regorus 0.13).
#
# Deny unless exactly safe (docs/policies.md): upstreams coerce arguments (the MCP Python SDK
# validates them with pydantic in lax mode: "yes", 1 and "on" are true for a bool, "+200" and
# "0200" are 200 for an int), so a rule never denies one spelling of the unsafe value; it allows
# only the exact safe values and denies everything else. `input.server` (the proxy's config) is
# trusted and typed; `input.tool.arguments` (the client's) is not.
package mcp.authz

import rego.v1

# --- Switches and params -----------------------------------------------------------------------

default missive_params := {}

missive_params := input.server.params if is_object(input.server.params)

# The params that turn the pack on by being set.
missive_param_keys := ["shared_labels", "teams", "allow_send", "allow_delete", "max_limit"]

missive_on if {
	not missive_off
	missive_requested
}

# Negated as rules, not as expressions on params (docs/policies.md, rules of thumb).
missive_off if missive_params.missive == false

missive_requested if missive_params.missive == true

missive_requested if {
	some key in missive_param_keys
	object.get(missive_params, key, null) != null
}

# A list param given as a list, or as one string.
missive_as_list(x) := x if is_array(x)

missive_as_list(x) := [x] if is_string(x)

missive_as_list(x) := [] if {
	not is_array(x)
	not is_string(x)
}

missive_label_scope := missive_as_list(object.get(missive_params, "shared_labels", null))

missive_team_scope := missive_as_list(object.get(missive_params, "teams", null))

missive_labels_scoped if missive_scope_param("shared_labels")

missive_teams_scoped if missive_scope_param("teams")

# Set (a list, even empty, or a string): an empty list confines to nothing.
missive_scope_param(key) if is_array(missive_params[key])

missive_scope_param(key) if is_string(missive_params[key])

missive_allow_delete := missive_as_list(object.get(missive_params, "allow_delete", null))

# --- The call ----------------------------------------------------------------------------------

# A tools/call the pack decides. The proxy always puts the call's arguments into the input (an
# object, {} when the client sent none); a call without them is refused below, not let through.
missive_call if {
	missive_on
	method == "tools/call"
	has_tool
	is_string(input.tool.name)
	is_object(input.tool.arguments)
}

missive_tool := input.tool.name if missive_call

missive_args := input.tool.arguments if missive_call

deny contains msg if {
	missive_on
	method == "tools/call"
	has_tool
	not missive_call
	msg := sprintf("tool %v: the call's arguments are not an object, so server %s cannot check them", [
		object.get(input.tool, "name", "(no name)"), server_name,
	])
}

# Anything but a read (write, custom, or an access the catalog did not give) may change Missive.
missive_changes if {
	missive_call
	not missive_read
}

missive_read if input.tool.access == "read"

missive_has_tag(tag) if {
	is_array(input.tool.tags)
	tag in input.tool.tags
}

# One value or a list of values of an argument, as a list ([] when absent or null).
missive_values(x) := x if is_array(x)

missive_values(x) := [x] if {
	not is_array(x)
	x != null
}

missive_values(x) := [] if x == null

# A value of the client's, as a reason shows it: strings quoted ("yes"), lists and objects by their
# kind. Numbers print alike in regorus and OPA only in a plain range (OPA writes 1.2345675e+06,
# regorus 1234567.5; -0 and 0); outside it they are "a number". (Not json.marshal: OPA escapes <, >
# and & in it, regorus does not.)
missive_show(v) := sprintf("%q", [v]) if is_string(v)

missive_show(v) := sprintf("%v", [v]) if is_boolean(v)

missive_show(v) := "null" if is_null(v)

missive_show(v) := "a list" if is_array(v)

missive_show(v) := "an object" if is_object(v)

missive_show(v) := "0" if {
	is_number(v)
	v == 0
}

missive_show(v) := sprintf("%v", [v]) if missive_plain_number(v)

missive_show(v) := "a number" if {
	is_number(v)
	v != 0
	not missive_plain_number(v)
}

# Whole numbers below 10^15, and fractions from 0.001 to 100000 (abs, before floor: floor fails in
# regorus beyond 64 bits).
missive_plain_number(v) if {
	is_number(v)
	v != 0
	abs(v) < 1000000000000000
	floor(v) == v
}

missive_plain_number(v) if {
	is_number(v)
	abs(v) >= 0.001
	abs(v) < 100000
	floor(v) != v
}

# Strings as they are (a label named vip reads vip), anything else as missive_show.
missive_name(v) := v if {
	is_string(v)
	v != ""
}

missive_name(v) := missive_show(v) if {
	not is_string(v)
}

missive_name(v) := `""` if v == ""

missive_text(values) := concat(", ", sort({missive_name(v) | some v in values}))

# --- 1. Listing conversations needs exactly one mailbox filter (Missive refuses it otherwise) ---

missive_mailbox_flags := ["inbox", "all", "assigned", "closed", "snoozed", "flagged", "trashed", "junked", "drafts"]

missive_mailbox_ids := ["shared_label", "team_inbox", "team_closed", "team_all"]

missive_mailbox_filters := array.concat(missive_mailbox_flags, missive_mailbox_ids)

missive_listing if missive_tool == "list_all_missive_conversations"

# A flag is set only by exactly true and unset only by absent, null or exactly false; an id is set
# only by a non-empty string and unset only by absent, null or "". Every other value (1, "yes",
# "false", 0, [], {} for a flag; a number, a boolean, a list for an id) is "bad" and refused below:
# the upstream would read it its own way (pydantic: "false" is false, 1 is true).
missive_flag_state(v) := "set" if {
	is_boolean(v)
	v == true
}

missive_flag_state(v) := "unset" if is_null(v)

missive_flag_state(v) := "unset" if {
	is_boolean(v)
	v == false
}

missive_flag_state(v) := "bad" if {
	not is_null(v)
	not is_boolean(v)
}

missive_id_state(v) := "set" if {
	is_string(v)
	v != ""
}

missive_id_state(v) := "unset" if is_null(v)

missive_id_state(v) := "unset" if v == ""

missive_id_state(v) := "bad" if {
	not is_null(v)
	not is_string(v)
}

missive_mailbox_flag_keys := {"inbox", "all", "assigned", "closed", "snoozed", "flagged", "trashed", "junked", "drafts"}

missive_mailbox_id_keys := {"shared_label", "team_inbox", "team_closed", "team_all"}

missive_all_unset := {
	"inbox": "unset", "all": "unset", "assigned": "unset", "closed": "unset", "snoozed": "unset",
	"flagged": "unset", "trashed": "unset", "junked": "unset", "drafts": "unset",
	"shared_label": "unset", "team_inbox": "unset", "team_closed": "unset", "team_all": "unset",
}

# Every mailbox filter of a listing, once: "set", "unset" or "bad". Only the filters the call names
# are judged (an absent one is unset): a call names one or two, judging all 13 cost ~100 µs.
missive_filter_states := object.union(missive_all_unset, object.union(
	{key: missive_flag_state(v) | some key, v in missive_args; key in missive_mailbox_flag_keys},
	{key: missive_id_state(v) | some key, v in missive_args; key in missive_mailbox_id_keys},
)) if missive_listing

# The mailbox filters the call sets, in the order above.
missive_filters_given := [key | some key in missive_mailbox_filters; key in missive_filters_set]

# The same as a set, from the filters the call names (what the count needs, without the order).
missive_filters_set contains key if {
	some key, _ in missive_args
	missive_filter_states[key] == "set"
}

missive_bad_flags contains key if {
	some key, _ in missive_args # only a named filter can be bad
	key in missive_mailbox_flag_keys
	missive_filter_states[key] == "bad"
}

missive_bad_ids contains key if {
	some key, _ in missive_args
	key in missive_mailbox_id_keys
	missive_filter_states[key] == "bad"
}

deny contains msg if {
	missive_call
	some key in missive_bad_flags
	msg := sprintf("list_all_missive_conversations: %s must be true, false or absent; got %s", [
		key, missive_show(missive_args[key]),
	])
}

deny contains msg if {
	missive_call
	some key in missive_bad_ids
	msg := sprintf("list_all_missive_conversations: %s must be an id (a non-empty string) or absent; got %s", [
		key, missive_show(missive_args[key]),
	])
}

deny contains msg if {
	missive_call
	missive_listing
	count(missive_filters_set) == 0
	msg := concat("", [
		"list_all_missive_conversations needs exactly one mailbox filter: add one of the arguments ",
		"inbox, all, assigned, closed, snoozed, flagged, trashed, junked or drafts (set to true), ",
		"or shared_label, team_inbox, team_closed or team_all (set to an id), e.g. {\"inbox\": true}",
	])
}

deny contains msg if {
	missive_call
	missive_listing
	count(missive_filters_set) > 1
	msg := sprintf(
		"list_all_missive_conversations takes exactly one mailbox filter, but this call sets %d (%s): keep one of them and remove the others",
		[count(missive_filters_given), concat(", ", missive_filters_given)],
	)
}

# --- 2. shared_labels / teams: conversations and writes confined to some labels or teams -------

missive_team_filters := ["team_inbox", "team_closed", "team_all"]

# In scope: the exact string, as the upstream receives it, is in the list (no number, no list, no
# other spelling: "VIP" or " vip" is not vip).
missive_label_in_scope(value) if {
	missive_labels_scoped
	is_string(value)
	value in missive_label_scope
}

missive_team_in_scope(value) if {
	missive_teams_scoped
	is_string(value)
	value in missive_team_scope
}

missive_filter_in_scope(key) if {
	key == "shared_label"
	missive_label_in_scope(missive_args[key])
}

missive_filter_in_scope(key) if {
	key in missive_team_filters
	missive_team_in_scope(missive_args[key])
}

# The filters of a listing that are not unset (a valid value or not) and not in scope: a flag
# (inbox: true) is never in scope, nor is an id filter with a value other than an in-scope string.
missive_listing_outside contains key if {
	some key in missive_mailbox_flags
	missive_filter_states[key] != "unset"
}

missive_listing_outside contains key if {
	some key in missive_mailbox_ids
	missive_filter_states[key] != "unset"
	not missive_filter_in_scope(key)
}

missive_listing_in_scope if {
	some key in missive_mailbox_ids
	missive_filter_in_scope(key)
	count(missive_listing_outside) == 0
}

# What the model may add instead, in one phrase.
missive_scope_options contains sprintf("shared_label set to one of: %s", [missive_text(missive_label_scope)]) if {
	missive_labels_scoped
	count(missive_label_scope) > 0
}

missive_scope_options contains sprintf("team_inbox, team_closed or team_all set to one of: %s", [
	missive_text(missive_team_scope),
]) if {
	missive_teams_scoped
	count(missive_team_scope) > 0
}

deny contains msg if {
	missive_call
	missive_listing
	missive_scoped
	not missive_listing_in_scope
	count(missive_scope_options) > 0
	msg := sprintf(
		"server %s may list conversations only within its shared labels or teams: filter by %s (and by nothing else)",
		[server_name, concat(", or ", sort(missive_scope_options))],
	)
}

deny contains msg if {
	missive_call
	missive_listing
	missive_scoped
	count(missive_scope_options) == 0
	msg := sprintf("server %s may not list conversations: it is confined to an empty list of shared labels and teams", [server_name])
}

missive_scoped if missive_labels_scoped

missive_scoped if missive_teams_scoped

# The arguments of a write (or custom) tool that name shared labels, and teams.
missive_label_args := ["shared_label", "shared_labels", "add_shared_labels", "remove_shared_labels"]

missive_team_args := ["team", "teams", "team_inbox", "team_closed", "team_all"]

missive_named_labels contains value if {
	missive_changes
	some key in missive_label_args
	some value in missive_values(object.get(missive_args, key, null))
}

missive_named_teams contains value if {
	missive_changes
	some key in missive_team_args
	some value in missive_values(object.get(missive_args, key, null))
}

# Every named value that is not an in-scope string is outside: 5, true, {"id": "vip"}, ["vip"]
# inside a list, "" and "VIP" alike.
missive_labels_outside contains value if {
	missive_labels_scoped
	some value in missive_named_labels
	not missive_label_in_scope(value)
}

missive_teams_outside contains value if {
	missive_teams_scoped
	some value in missive_named_teams
	not missive_team_in_scope(value)
}

deny contains msg if {
	missive_call
	count(missive_labels_outside) > 0
	msg := sprintf(
		"tool %s names shared labels server %s may not use (%s): use only %s, or leave the shared label out",
		[missive_tool, server_name, missive_text(missive_labels_outside), missive_choices(missive_label_scope)],
	)
}

deny contains msg if {
	missive_call
	count(missive_teams_outside) > 0
	msg := sprintf(
		"tool %s names teams server %s may not use (%s): use only %s, or leave the team out",
		[missive_tool, server_name, missive_text(missive_teams_outside), missive_choices(missive_team_scope)],
	)
}

missive_choices(scope) := sprintf("one of: %s", [missive_text(scope)]) if count(scope) > 0

missive_choices(scope) := "none (this server is confined to an empty list)" if count(scope) == 0

# --- 3. Drafts are drafted, not sent, unless params.allow_send is true -------------------------

missive_draft_tool if {
	missive_changes
	missive_has_tag("drafts")
}

# Saving a draft is `send` absent, null or exactly false, and `send_at` absent or null. Anything
# else is refused: true, but also 1, "yes", "on", "t", "1" (true to the upstream), and "false", 0,
# "" or [] (which the policy will not guess about).
missive_send := object.get(missive_args, "send", null) if missive_draft_tool

missive_send_at := object.get(missive_args, "send_at", null) if missive_draft_tool

missive_send_saves if is_null(missive_send)

missive_send_saves if {
	is_boolean(missive_send)
	missive_send == false
}

missive_sends contains sprintf("send: %s", [missive_show(missive_send)]) if {
	missive_draft_tool
	not missive_send_saves
}

missive_sends contains sprintf("send_at: %s", [missive_show(missive_send_at)]) if {
	missive_draft_tool
	not is_null(missive_send_at)
}

missive_send_allowed if missive_params.allow_send == true

deny contains msg if {
	missive_call
	count(missive_sends) > 0
	not missive_send_allowed
	msg := sprintf(
		"tool %s would send the email (%s), and server %s only writes drafts: remove send and send_at to save the draft for a human to review and send",
		[missive_tool, concat(", ", sort(missive_sends)), server_name],
	)
}

# --- 4. Deletes only with the tools listed in params.allow_delete ------------------------------

deny contains msg if {
	missive_call
	input.tool.method == "delete"
	not missive_tool in missive_allow_delete
	msg := sprintf(
		"tool %s deletes, and server %s does not allow deleting with it (it is not in allow_delete): do not delete; ask a human to do it",
		[missive_tool, server_name],
	)
}

# --- 5. params.max_limit caps the `limit` argument ---------------------------------------------

missive_max_limit := missive_params.max_limit if is_number(missive_params.max_limit)

# Allowed: `limit` absent or null, or a JSON number that is whole (25.0 is) from 1 to max_limit.
# Strings are refused, however numeric: the upstream reads "+200", " 200", "0200" and "200_000"
# as numbers the policy would have to parse exactly as it does.
missive_limit := object.get(missive_args, "limit", null) if missive_call

missive_limit_whole if {
	is_number(missive_limit)
	abs(missive_limit) < 1000000000000000 # before floor, which fails in regorus beyond 64 bits
	floor(missive_limit) == missive_limit
}

missive_limit_ok if is_null(missive_limit)

missive_limit_ok if {
	missive_limit_whole
	missive_limit >= 1
	missive_limit <= missive_max_limit
}

missive_limit_above if {
	missive_limit_whole
	missive_limit > missive_max_limit
}

# A whole number above the cap: say so, and how to page.
deny contains msg if {
	missive_call
	missive_limit_above
	msg := sprintf(
		"tool %s asks for limit %v, above the largest limit server %s allows (%v): ask for at most %v and page through the rest",
		[missive_tool, missive_limit, server_name, missive_max_limit, missive_max_limit],
	)
}

# Anything else that is not allowed: a string, a boolean, 0, a negative or a fraction, a list.
deny contains msg if {
	missive_call
	is_number(missive_max_limit)
	not missive_limit_ok
	not missive_limit_above
	msg := sprintf("tool %s: limit must be a whole number from 1 to %v; got %s", [
		missive_tool, missive_max_limit, missive_show(missive_limit),
	])
}
