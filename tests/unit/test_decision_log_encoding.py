"""A decision whose input orjson cannot encode is still logged: one entry, its text escaped."""

import json

from proxy.observe.decision_log import DecisionLog, encodable


def test_decision_log_escapes_unencodable_text(tmp_path):
    path = tmp_path / "decisions.log"
    log = DecisionLog(f"file:{path}", redact_arguments=False)
    deep: list = []
    for _ in range(300):
        deep = [deep]
    input = {"message": {"kind": "request", "method": "tools/call", "name": "x\ud800y"},
             "tool": {"name": "x\ud800y", "arguments": {"\udfff": 2**70, "deep": deep, "ok": "é"}}}
    log.log("id-1", "2026-01-01T00:00:00Z", input, {"allow": False, "reasons": ["no tool x\ud800y"]}, 1, {})
    log.close()
    [line] = path.read_text().splitlines()  # one entry, valid JSON, nothing lost
    entry = json.loads(line)
    assert entry["input"]["message"]["name"] == "x\\ud800y" and entry["result"]["reasons"] == ["no tool x\\ud800y"]
    assert entry["input"]["tool"]["arguments"]["\\udfff"] == str(2**70)
    assert entry["input"]["tool"]["arguments"]["ok"] == "é"
    assert "[nested too deeply]" in line


def test_encodable_leaves_what_json_carries_as_it_is():
    value = {"a": [1, 2.5, None, True, "é😀"], "b": {"c": -(2**63)}}
    assert encodable(value) == value
