"""Real MCP peers (official `mcp` SDK servers and client helpers) for integration tests."""
