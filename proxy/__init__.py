"""mcp-policy-proxy: a policy-enforcing reverse proxy for the Model Context Protocol."""

__version__ = "0.1.0"
