"""Official-SDK MCP server (``mcp`` 2.3.0 ``MCPServer``) over stdio: the proxy's `upstream.command`
in tests (tests/integration/test_stdio_upstream.py).

Run: ``python -m tests.peers.stdio_server`` (cwd = repository root). The tools of
tests/peers/sdk_server.py, plus what a stdio server alone can show:

- ``whoami`` (the process id), ``remember``/``recall`` (state held by this one process): two
  sessions served by separate processes never see each other's state;
- ``ask_sampling``, ``ask_elicitation``: server→client requests, answered by the client;
- ``progress_and_log``: a progress notification and a log message within one call;
- ``shout``: a line on stderr (the proxy logs it); ``crash``: the process exits at once;
- ``environment``: which variables are set, and the working directory; ``big``: a long answer.

At start it writes one line to stderr and one line that is no JSON-RPC message to stdout (the MCP
spec allows only messages there: the proxy's bridge must log it and drop it).
"""

from __future__ import annotations

import os
import sys
import warnings

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel

from tests.peers.sdk_server import build_server


class Answer(BaseModel):
    answer: str


def build_stdio_server() -> MCPServer:
    mcp = build_server()
    memory: dict[str, str] = {}

    @mcp.tool()
    def whoami() -> str:
        """This server process's id."""
        return str(os.getpid())

    @mcp.tool()
    def remember(value: str) -> str:
        """Keep `value` in this process."""
        memory["value"] = value
        return "kept"

    @mcp.tool()
    def recall() -> str:
        """What `remember` kept in this process ("" if nothing)."""
        return memory.get("value", "")

    @mcp.tool()
    async def ask_sampling(prompt: str, ctx: Context) -> str:
        """Ask the client to sample a message; answer its text."""
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=16)
        content = result.content
        return content.text if isinstance(content, TextContent) else str(content)

    @mcp.tool()
    async def ask_elicitation(question: str, ctx: Context) -> str:
        """Ask the client (its user) a question; answer the action and the answer."""
        result = await ctx.elicit(question, Answer)
        return f"{result.action}:{result.data.answer if result.action == 'accept' and result.data else ''}"

    @mcp.tool()
    async def progress_and_log(text: str, ctx: Context) -> str:
        """One progress notification and one log message, then the answer."""
        await ctx.report_progress(1, 2, "half way")
        await ctx.info(text)
        return "reported"

    @mcp.tool()
    def shout(text: str) -> str:
        """Write `text` to stderr."""
        print(f"shout: {text}", file=sys.stderr, flush=True)
        return "shouted"

    @mcp.tool()
    def environment(names: list[str]) -> str:
        """Which of the environment variables `names` are set (never their values), and the cwd."""
        return " ".join(f"{n}={'set' if n in os.environ else 'unset'}" for n in names) + f" cwd={os.getcwd()}"

    @mcp.tool()
    def big(size: int) -> str:
        """A text of `size` bytes."""
        return "x" * size

    @mcp.tool()
    def crash(code: int = 3) -> str:
        """Exit at once with `code`, answering nothing."""
        os._exit(code)

    return mcp


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)  # sampling and logging are deprecated in 2026-07-28
    print(f"stdio peer starting (pid {os.getpid()})", file=sys.stderr, flush=True)
    os.write(1, b"this line is not a JSON-RPC message\n")  # before the SDK takes stdout over
    build_stdio_server().run("stdio")


if __name__ == "__main__":
    main()
