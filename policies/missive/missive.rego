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
# Every rule reads `input` only, every name is prefixed `missive_` (rules of one package share a
# namespace across files), and every function is defined in this file only (regorus 0.13).
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
# object, {} when the client sent none): inputs without them are not calls the proxy builds.
missive_call if {
	missive_on
	method == "tools/call"
	has_tool
	is_string(input.tool.name)
	is_object(input.tool.arguments)
}

missive_tool := input.tool.name if missive_call

missive_args := input.tool.arguments if missive_call

missive_write if {
	missive_call
	input.tool.access == "write"
}

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

missive_text(values) := concat(", ", sort([sprintf("%v", [v]) | some v in values]))

# --- 1. Listing conversations needs exactly one mailbox filter (Missive refuses it otherwise) ---

missive_mailbox_flags := ["inbox", "all", "assigned", "closed", "snoozed", "flagged", "trashed", "junked", "drafts"]

missive_mailbox_ids := ["shared_label", "team_inbox", "team_closed", "team_all"]

missive_mailbox_filters := array.concat(missive_mailbox_flags, missive_mailbox_ids)

# The mailbox filters the call sets (false, null and "" set nothing), in the order above.
missive_filters_given := [key |
	some key in missive_mailbox_filters
	missive_filter_set(key)
]

missive_filter_set(key) if {
	value := missive_args[key]
	value != false
	value != null
	value != ""
}

missive_listing if missive_tool == "list_all_missive_conversations"

deny contains msg if {
	missive_listing
	count(missive_filters_given) == 0
	msg := concat("", [
		"list_all_missive_conversations needs exactly one mailbox filter: add one of the arguments ",
		"inbox, all, assigned, closed, snoozed, flagged, trashed, junked or drafts (set to true), ",
		"or shared_label, team_inbox, team_closed or team_all (set to an id), e.g. {\"inbox\": true}",
	])
}

deny contains msg if {
	missive_listing
	count(missive_filters_given) > 1
	msg := sprintf(
		"list_all_missive_conversations takes exactly one mailbox filter, but this call sets %d (%s): keep one of them and remove the others",
		[count(missive_filters_given), concat(", ", missive_filters_given)],
	)
}

# --- 2. shared_labels / teams: conversations and writes confined to some labels or teams -------

missive_team_filters := ["team_inbox", "team_closed", "team_all"]

missive_listing_in_scope if {
	missive_labels_scoped
	missive_args.shared_label in missive_label_scope
}

missive_listing_in_scope if {
	missive_teams_scoped
	some key in missive_team_filters
	missive_args[key] in missive_team_scope
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
	missive_listing
	missive_scoped
	count(missive_scope_options) == 0
	msg := sprintf("server %s may not list conversations: it is confined to an empty list of shared labels and teams", [server_name])
}

missive_scoped if missive_labels_scoped

missive_scoped if missive_teams_scoped

# The arguments of a write that name shared labels, and teams.
missive_label_args := ["shared_label", "shared_labels", "add_shared_labels", "remove_shared_labels"]

missive_team_args := ["team", "teams", "team_inbox", "team_closed", "team_all"]

missive_named_labels contains value if {
	missive_write
	some key in missive_label_args
	some value in missive_values(object.get(missive_args, key, null))
}

missive_named_teams contains value if {
	missive_write
	some key in missive_team_args
	some value in missive_values(object.get(missive_args, key, null))
}

missive_labels_outside contains value if {
	missive_labels_scoped
	some value in missive_named_labels
	not value in missive_label_scope
}

missive_teams_outside contains value if {
	missive_teams_scoped
	some value in missive_named_teams
	not value in missive_team_scope
}

deny contains msg if {
	count(missive_labels_outside) > 0
	msg := sprintf(
		"tool %s names shared labels server %s may not use (%s): use only %s, or leave the shared label out",
		[missive_tool, server_name, missive_text(missive_labels_outside), missive_choices(missive_label_scope)],
	)
}

deny contains msg if {
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
	missive_call
	input.tool.access in {"write", "custom"}
	missive_has_tag("drafts")
}

missive_sends contains "send: true" if {
	missive_draft_tool
	missive_args.send in {true, "true"}
}

missive_sends contains "send_at" if {
	missive_draft_tool
	object.get(missive_args, "send_at", null) != null
}

missive_send_allowed if missive_params.allow_send == true

deny contains msg if {
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

missive_limit := missive_args.limit if is_number(missive_args.limit)

missive_limit := to_number(missive_args.limit) if {
	is_string(missive_args.limit)
	regex.match(`^[0-9]+(\.[0-9]+)?$`, missive_args.limit)
}

deny contains msg if {
	missive_limit > missive_max_limit
	msg := sprintf(
		"tool %s asks for limit %v, above the largest limit server %s allows (%v): ask for at most %v and page through the rest",
		[missive_tool, missive_limit, server_name, missive_max_limit, missive_max_limit],
	)
}
