"""The Dockerfile read as instructions, for the tests that check what the image would run."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD (after any HEALTHCHECK options and CMD)."""
        return list(json.loads(self.args[self.args.index("["):]))


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction in order; comments dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            out.append(Instruction(keyword.upper(), rest.strip()))
            pending = ""
    return out


def stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """The instructions of each stage (from its FROM on); ARGs before the first FROM are left out."""
    result: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def copied_sources(path: Path = DOCKERFILE) -> list[str]:
    """What the build stage COPYs from the build context (the files an image build needs)."""
    sources: list[str] = []
    for ins in stages(path)[0]:
        if ins.keyword == "COPY" and "--from" not in ins.args:
            sources += shlex.split(ins.args)[:-1]
    return sources


def env(stage: list[Instruction]) -> dict[str, str]:
    """The ENV of a stage (KEY=value pairs)."""
    values: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                key, _, value = pair.partition("=")
                values[key] = value
    return values
