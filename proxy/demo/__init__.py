"""A demo Missive upstream: a real MCP server (official SDK) over a seeded in-memory organisation.

Run: ``python -m proxy.demo.upstream --port 8931`` (see :mod:`proxy.demo.upstream`). Needs the
``mcp`` package (the ``test`` extra); the proxy itself never imports this package.
"""
