import json

from proxy.observe.decision_log import DecisionLog


def test_opa_shaped_lines_with_redacted_arguments(tmp_path):
    path = tmp_path / "decisions.log"
    log = DecisionLog(f"file:{path}")
    input = {"time": "2026-11-23T20:00:00Z", "tool": {"name": "t", "arguments": {"secret": "s3cr3t", "n": 1}}}
    log.log("id-1", "2026-11-23T20:00:00Z", input, {"allow": True}, 1234, {"engine": "embedded"})
    log.close()
    [line] = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["decision_id"] == "id-1" and entry["path"] == "mcp/authz/decision"
    assert entry["input"]["tool"]["arguments"] == {"secret": "[redacted]", "n": "[redacted]"}
    assert entry["result"] == {"allow": True} and entry["metrics"] == {"timer_eval_ns": 1234}
    assert entry["labels"]["engine"] == "embedded" and entry["labels"]["app"] == "mcp-policy-proxy"
    assert "s3cr3t" not in path.read_text()
    assert input["tool"]["arguments"]["secret"] == "s3cr3t"  # the policy's input is not changed


def test_off_writes_nothing(tmp_path):
    log = DecisionLog("off")
    log.log("id", "t", {}, {}, 0, {})
    log.close()
