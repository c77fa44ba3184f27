# The default MCP authorization policy of mcp-policy-proxy.
#
# The proxy asks for `data.mcp.authz.decision` once per message (docs/policy-input.md) and gets
#   {"allow": bool, "reasons": [string], "visible_tools": [string]}
#
# Shape of the policy: `deny` collects one sentence per reason to refuse the message, and a message
# is allowed iff nothing was denied. To tighten it, add a file with `package mcp.authz` and more
# `deny contains msg if { … }` rules (or `hidden_tools contains name if { … }` to hide tools); see
# docs/policies.md. Every rule reads `input` only (the time too): a decision can be replayed from
# its decision-log entry.
package mcp.authz

import rego.v1

# --- The decision ------------------------------------------------------------------------------

# Never undefined, so the proxy always gets an answer it can log. (Should an extension make the
# rule below undefined, the message is still denied, with a reason, rather than answered with 503.)
default decision := {
	"allow": false,
	"reasons": ["the policy could not decide this message"],
	"visible_tools": [],
}

decision := object.union(
	{
		"allow": count(deny) == 0,
		"reasons": sort(deny), # a set in Rego; sorted so every engine answers the same list
		"visible_tools": visible_tools,
	},
	scope_challenge,
)

# Extension hook: a rule `insufficient_scope := "mcp:write" if { … }` (together with a deny) makes
# the proxy answer a denied request with HTTP 403 and `WWW-Authenticate: Bearer
# error="insufficient_scope", scope="mcp:write"`, so an OAuth client can ask for that scope.
default insufficient_scope := null

default scope_challenge := {}

scope_challenge := {"insufficient_scope": insufficient_scope} if is_string(insufficient_scope)

# What the client may *see* of the tools this message is about, whatever `allow` says: for a
# tools/call the proxy answers a hidden tool with "Unknown tool", a visible but denied one with an
# error result the model can read.
visible_tools := [tool.name | some tool in message_tools; is_string(tool.name); visible(tool)]

# The tools this message is about: every tool of a tools/list page, or the called tool.
default message_tools := []

message_tools := input.tools if {
	tools_page
	is_array(input.tools)
}

message_tools := [input.tool] if {
	method == "tools/call"
	has_tool
}

tools_page if {
	input.message.kind == "response"
	input.message.method == "tools/list"
}

has_tool if is_object(input.tool)

# --- Input, with fallbacks ---------------------------------------------------------------------

# The JSON-RPC method, only when it is a string (a response may carry null): string builtins on
# anything else would be an evaluation error instead of a decision.
method := input.message.method if is_string(input.message.method)

# Fallbacks so that a reason can always be phrased: a deny rule whose message is undefined would
# silently not deny.
server_name := object.get(input, ["server", "name"], "(unnamed)")

server_methods := object.get(input, ["server", "methods"], [])

server_tags := object.get(input, ["server", "tags"], [])

listed(xs) := concat(", ", xs) if count(xs) > 0

listed(xs) := "none" if count(xs) == 0

# --- Shape: anything but input v1 is refused ---------------------------------------------------

deny contains "the policy input is not version 1" if not input.version == 1

# Negate rules, not calls: OPA reads `not is_object(input.server)` as undefined (not true) when
# input.server is missing, regorus as true. `not has_server` is true in both.
deny contains "the policy input has no server" if not has_server

deny contains "the policy input has no message" if not has_message

has_server if is_object(input.server)

has_message if is_object(input.message)

# --- expires_at: past the instant, the server answers nothing ----------------------------------

deny contains sprintf("server %s expired at %s", [server_name, input.server.expires_at]) if expired

expired if {
	expiry_set # first: the RFC 3339 checks are regexes, not worth running without an expiry
	expiry_checkable
	time.parse_rfc3339_ns(input.time) >= time.parse_rfc3339_ns(input.server.expires_at)
}

# time.parse_rfc3339_ns raises on a malformed time (an error, answered 503): refuse with a reason.
deny contains msg if {
	expiry_set
	not expiry_checkable
	msg := sprintf("server %s has an expiry, but the time or the expiry is not RFC 3339", [server_name])
}

expiry_set if input.server.expires_at != null

expiry_checkable if {
	rfc3339(input.time)
	rfc3339(input.server.expires_at)
}

rfc3339(t) if {
	is_string(t)
	regex.match(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$`, t)
}

# --- require_api_token_auth: the URL token names the server, a bearer token names the client ---

deny contains msg if {
	input.server.require_api_token_auth == true
	not bearer_authenticated
	msg := sprintf(
		"server %s requires a bearer token (JWT or API token); a URL token alone is not enough",
		[server_name],
	)
}

# Membership tests (not iteration) so that a malformed `via` denies instead of raising.
bearer_authenticated if "jwt" in input.principal.via

bearer_authenticated if "api_token" in input.principal.via

# --- Which messages exist for this policy ------------------------------------------------------

# Session plumbing every client needs, whatever tools it may use.
housekeeping := {
	"initialize", "ping", "server/discover", "subscriptions/listen",
	"logging/setLevel", "completion/complete",
}

# Resources, prompts and tasks are not tools: methods and tags do not gate them (add deny rules to
# do so). tools/list is let through and its answer filtered page by page (visible_tools).
listings := {"tools/list", "resources/list", "resources/templates/list", "prompts/list"}

reads := {"resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/get"}

tasks := {"tasks/get", "tasks/result", "tasks/list", "tasks/cancel"}

known if method in housekeeping

# Notifications only: a *request* named notifications/… (it carries an id, so the upstream acts on
# it and answers) is an unknown method like any other, unless params.allow_methods lists it.
known if {
	input.message.kind == "notification"
	startswith(method, "notifications/")
}

known if method in listings

known if method in reads

known if method in tasks

known if method == "tools/call" # decided by the tool's visibility, below

known if tools_page # filtered by visible_tools

# What the upstream asks the client (sampling/createMessage, elicitation/create, roots/list, …)
# and the client's answers: the client stays in control of those itself.
known if {
	input.message.direction == "server_to_client"
	input.message.kind == "request"
}

known if {
	input.message.direction == "client_to_server"
	input.message.kind == "response"
}

# A server may open more methods by name (config: params.allow_methods).
known if method in object.get(input, ["server", "params", "allow_methods"], [])

deny contains msg if {
	not known
	msg := sprintf("%v is not a method server %s allows", [
		object.get(input, ["message", "method"], null), server_name,
	])
}

# --- Tools: methods and tags -------------------------------------------------------------------

# A tool is visible when the server's methods and tags both let it through and no rule hides it.
visible(tool) if {
	method_allowed(tool)
	tag_allowed(tool)
	not is_hidden(tool)
}

# `read`, `write` and `custom` name an access level: read = list + get, write = create + update +
# delete, custom = every custom tool.
access_levels := {"read", "write", "custom"}

method_allowed(tool) if tool.access in server_methods

# Any other entry names a method: list, get, …, or a custom one such as `merge`. A custom tool
# that happens to be named "read" is not thereby a read tool.
method_allowed(tool) if {
	tool.method in server_methods
	not tool.method in access_levels
}

# No tags configured: every tag is allowed. Otherwise the tool needs one of them.
tag_allowed(_) if count(server_tags) == 0

tag_allowed(tool) if {
	some tag in server_tags
	tag in tool.tags
}

# Extension hook: more files of package mcp.authz may add `hidden_tools contains tool.name if …`
# (for some tool in message_tools) to hide tools from lists and calls alike. This one hides the
# names listed in the server's params.hidden_tools. (A set rule, not a function: regorus cannot
# yet spread one function's definitions over several files.)
hidden_tools contains tool.name if {
	some tool in message_tools
	tool.name in object.get(input, ["server", "params", "hidden_tools"], [])
}

is_hidden(tool) if tool.name in hidden_tools

deny contains "tools/call without a tool" if {
	method == "tools/call"
	not has_tool
}

deny contains msg if {
	method == "tools/call"
	has_tool
	not method_allowed(input.tool)
	msg := sprintf("%s is not among the methods of server %s (%s)", [
		object.get(input.tool, "method", "(no method)"), server_name, listed(server_methods),
	])
}

deny contains msg if {
	method == "tools/call"
	has_tool
	not tag_allowed(input.tool)
	msg := sprintf("tool %s has none of the tags of server %s (%s)", [
		object.get(input.tool, "name", "(no name)"), server_name, listed(server_tags),
	])
}

deny contains sprintf("tool %s is hidden from this client", [input.tool.name]) if {
	method == "tools/call"
	has_tool
	is_hidden(input.tool)
}
