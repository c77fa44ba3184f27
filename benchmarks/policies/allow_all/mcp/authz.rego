# The benchmark's "no policy": every message allowed, every tool visible, at the least cost a
# decision can have (docs/policy-input.md: the decision's shape). The proxy's pipeline still runs
# in full: parsing, the tool inventory and argument schema check, one evaluation per message.
package mcp.authz

import rego.v1

decision := {"allow": true, "reasons": [], "visible_tools": visible_tools}

default visible_tools := []

# A tools/list page: all of its tools.
visible_tools := [t.name | some t in input.tools] if is_array(input.tools)

# A tools/call: the called tool.
visible_tools := [input.tool.name] if is_string(input.tool.name)
