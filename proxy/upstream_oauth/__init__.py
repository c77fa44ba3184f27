"""The proxy as an OAuth 2.1 client of its upstream (`upstream.oauth`; docs/missive.md).

`upstream login` discovers the upstream's authorization server (its 401 `WWW-Authenticate` →
RFC 9728 protected resource metadata → RFC 8414 server metadata), registers the proxy (RFC 7591)
unless a client id is configured, has one person approve in a browser (authorization code with
PKCE S256 and the RFC 8707 `resource`), and keeps the grant in `upstream.oauth.token_file`.
`serve` sends its access token on every upstream request, refreshes it ahead of expiry, and answers
503 with what to do when the grant is gone. The grant is the proxy's own: never forwarded to a
client, never taken from one, never logged.

- store.py: the token file (mode 0600, optionally encrypted), a lock shared by every process using it.
- client.py: discovery, registration and token requests (the MCP SDK's discovery and registration,
  authlib's OAuth 2 client).
- login.py: the `upstream login` and `upstream status` commands.
- grant.py: the grant in `serve`: the hot path's header value, one refresh at a time.
"""
