"""Stream admission (proxy/transport/admission.py): the caps, their order, and that every slot comes back."""

from __future__ import annotations

import random

from proxy.config import Limits
from proxy.transport.admission import LEGACY, PER_PRINCIPAL, TOTAL, Admission, Refusal, Slot


def _admission(refused: list[str], **caps: int) -> Admission:
    limits = Limits(**{"max_streams_per_principal": 2, "max_streams": 3, "max_legacy_sessions": 1, **caps})
    return Admission(limits, refused.append)


def test_caps_refuse_in_order_and_count_each_refusal():
    refused: list[str] = []
    admission = _admission(refused)
    a1, a2 = admission.take("alice", "s"), admission.take("alice", "s")
    assert isinstance(a1, Slot) and isinstance(a2, Slot)
    assert admission.take("alice", "s") is PER_PRINCIPAL  # 429: alice's own
    assert isinstance(admission.take("alice", "other-server"), Slot)  # the key is principal and server
    assert admission.take("bob", "s") is TOTAL  # 503: the worker is full
    a1.release()
    legacy = admission.take("bob", "s", legacy=True)
    assert isinstance(legacy, Slot)
    a2.release()
    assert admission.take("carol", "s", legacy=True) is LEGACY
    assert refused == ["limits.max_streams_per_principal", "limits.max_streams", "limits.max_legacy_sessions"]
    assert (PER_PRINCIPAL.status, TOTAL.status, LEGACY.status) == (429, 503, 503)
    legacy.release()
    assert admission.legacy_sessions == 0


def test_every_slot_comes_back_whatever_the_order_and_however_often_released():
    admission = _admission([], max_streams_per_principal=50, max_streams=200, max_legacy_sessions=50)
    rng = random.Random(7)
    held: list[Slot] = []
    for _ in range(5000):
        if held and rng.random() < 0.5:
            slot = held.pop(rng.randrange(len(held)))
            slot.release()
            slot.release()  # idempotent: a stream that ends two ways at once is released once
        else:
            taken = admission.take(f"p{rng.randrange(8)}", f"s{rng.randrange(3)}", legacy=rng.random() < 0.2)
            if not isinstance(taken, Refusal):
                held.append(taken)
        assert admission.streams == len(held)
    for slot in held:
        slot.release()
    assert admission.streams == 0 and admission.legacy_sessions == 0
    assert admission._by_key == {}  # no key kept for principals with nothing open
