"""stdio upstreams (`upstream.command`): the proxy serves a stdio MCP server through a bridge.

    client ─HTTP─▶ proxy (every check, every decision) ─HTTP, loopback, secret─▶ bridge ─stdio─▶ server
                                                                                          (one per session)

The proxy's one decision path stays as it is: it proxies the bridge like any HTTP upstream, over
Streamable HTTP and legacy SSE alike. The bridge (bridge.py, a process of its own that the proxy
starts, restarts and stops: launcher.py) speaks those transports with the official SDK's server
transports and pumps their messages to and from a server process per client session (pump.py,
child.py); health.py says whether the command can start. docs/upstreams.md "stdio servers" has
the session model, its costs and limits.
"""
