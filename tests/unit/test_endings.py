"""Ending (proxy/transport/endings.py): an asyncio.Event that also calls back, once, when set."""

from __future__ import annotations

import asyncio

from proxy.transport.endings import Ending


async def test_callbacks_run_once_when_set_and_forgotten_ones_never() -> None:
    ending, calls = Ending(), []
    first, second = (lambda: calls.append("first")), (lambda: calls.append("second"))
    ending.call_when_set(first)
    ending.call_when_set(second)
    ending.forget(second)
    ending.forget(second)  # forgetting twice (or a callback never registered) is fine
    ending.set()
    ending.set()
    assert calls == ["first"] and ending.is_set()


async def test_a_callback_on_an_ending_already_set_runs_soon() -> None:
    ending, calls = Ending(), []
    ending.set()
    ending.call_when_set(lambda: calls.append("late"))
    assert calls == []  # not from inside call_when_set
    await asyncio.sleep(0)
    assert calls == ["late"]
    assert await asyncio.wait_for(ending.wait(), 1) is True  # still an asyncio.Event
