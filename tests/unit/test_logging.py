"""One log format (proxy/observe/logging_setup.py, docs/logging.md): each logger's lines in JSON
and in text, the access line's extra fields (redacted path, decision ids, trace id), decision-log
lines on stdout, and the dict uvicorn is configured with."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from typing import Any

import pytest
import uvicorn

from proxy.cli import _parser
from proxy.observe import access_log, log_context, logging_setup
from proxy.observe.decision_log import DecisionLog

TOKEN = "tok-9f8e7d6c5b4a39281706"
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "mcp_policy_proxy")


@pytest.fixture(autouse=True)
def restore_logging() -> Any:
    """configure() changes process-wide state: put every touched logger back afterwards."""
    saved = {name: (lg.handlers[:], lg.level, lg.propagate, lg.filters[:])
             for name in LOGGERS for lg in [logging.getLogger(name)]}
    previous = logging_setup.current_format()
    yield
    for name, (handlers, level, propagate, filters) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.filters[:] = handlers, filters
        lg.setLevel(level)
        lg.propagate = propagate
    logging_setup._format = previous


def access_record(path: str, status: int = 200) -> logging.LogRecord:
    """A record as uvicorn's httptools protocol makes it, through the redaction filter."""
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "POST", path, "1.1", status), None)
    assert access_log.RedactTokens().filter(record)
    return record


def record(name: str, msg: str, *args: Any, level: int = logging.WARNING, exc: Any = None) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc)


def test_json_lines_have_time_level_logger_msg():
    line = logging_setup.JsonFormatter().format(record("mcp_policy_proxy.app", "limit %s is %d", "x", 3))
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "msg"}
    assert entry["level"] == "warning" and entry["logger"] == "mcp_policy_proxy.app" and entry["msg"] == "limit x is 3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert "\n" not in line


def test_json_exception_is_one_field_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        line = logging_setup.JsonFormatter().format(record("x", "request failed", level=logging.ERROR,
                                                           exc=sys.exc_info()))
    entry = json.loads(line)
    assert "\n" not in line and entry["level"] == "error"
    assert entry["exc"].startswith("Traceback") and "ValueError: boom" in entry["exc"]


def test_json_access_line_carries_redacted_path_decision_ids_and_trace_id():
    def in_request() -> str:
        log_context.begin_request()
        log_context.note_decision("id-1")
        log_context.note_decision("id-2")
        return logging_setup.JsonAccessFormatter().format(access_record(f"/{TOKEN}/mcp?access_token={TOKEN}", 403))

    line = asyncio.run(_in_task(in_request))
    entry = json.loads(line)
    assert TOKEN not in line
    assert entry["path"] == "/[redacted]/mcp?access_token=[redacted]"
    assert (entry["client"], entry["method"], entry["http_version"], entry["status"]) == ("127.0.0.1:5000", "POST",
                                                                                          "1.1", 403)
    assert entry["decision_ids"] == ["id-1", "id-2"] and entry["trace_id"] == ""
    assert entry["logger"] == "uvicorn.access"
    assert entry["msg"].endswith('"POST /[redacted]/mcp?access_token=[redacted] HTTP/1.1" 403')


async def _in_task(fn: Any) -> Any:
    return await asyncio.ensure_future(_call(fn))  # a task: a context of its own, as uvicorn gives each request


async def _call(fn: Any) -> Any:
    return fn()


def test_decision_ids_stay_with_their_request():
    """Each request's task has its own list; decisions taken in a child task land in it too."""
    async def request(n: int) -> str:
        log_context.begin_request()
        await asyncio.ensure_future(_call(lambda: log_context.note_decision(f"child-{n}")))
        log_context.note_decision(f"own-{n}")
        await asyncio.sleep(0)
        return logging_setup.JsonAccessFormatter().format(access_record("/mcp"))

    async def both() -> list[str]:
        return list(await asyncio.gather(request(1), request(2)))

    one, two = (json.loads(line)["decision_ids"] for line in asyncio.run(both()))
    assert one == ["child-1", "own-1"] and two == ["child-2", "own-2"]
    assert log_context.DECISION_IDS.get() is None  # outside a request: nothing noted


def test_decision_ids_are_bounded_per_request():
    log_context.DECISION_IDS.set([])
    for i in range(log_context.MAX_IDS + 10):
        log_context.note_decision(str(i))
    assert len(log_context.DECISION_IDS.get() or ()) == log_context.MAX_IDS
    log_context.DECISION_IDS.set(None)


def test_text_lines():
    line = logging_setup.TextFormatter().format(record("mcp_policy_proxy.app", "draining"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING mcp_policy_proxy\.app: draining", line)
    access = logging_setup.TextAccessFormatter().format(access_record(f"/{TOKEN}/mcp"))
    assert access.endswith('127.0.0.1:5000 - "POST /[redacted]/mcp HTTP/1.1" 200 decision_ids=- trace_id=-')
    assert TOKEN not in access


def test_configure_puts_every_logger_in_one_format(capsys):
    logging_setup.configure("json", "info")
    logging.getLogger("mcp_policy_proxy.app").info("from the proxy")
    logging.getLogger("uvicorn.error").info("from uvicorn")
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/{TOKEN}/sse", "1.1", 200)
    logging.getLogger("uvicorn.access").info("not an access line's shape")  # dropped: it could not be redacted
    out, err = capsys.readouterr()
    errs = [json.loads(line) for line in err.splitlines()]
    assert [(e["logger"], e["msg"]) for e in errs] == [("mcp_policy_proxy.app", "from the proxy"),
                                                        ("uvicorn.error", "from uvicorn")]
    [access] = [json.loads(line) for line in out.splitlines()]
    assert access["path"] == "/[redacted]/sse" and TOKEN not in out

    logging_setup.configure("text", "info")
    logging.getLogger("uvicorn.error").info("from uvicorn")
    _, err = capsys.readouterr()
    assert err.rstrip().endswith(" INFO uvicorn.error: from uvicorn")


def test_uvicorn_takes_the_dict_as_its_log_config(capsys):
    config = logging_setup.configure("json", "info")
    uvicorn.Config(app=None, log_config=config, log_level="info", access_log=True).configure_logging()
    access = logging.getLogger("uvicorn.access")
    assert access.handlers and isinstance(access.handlers[0].formatter, logging_setup.JsonAccessFormatter)
    assert any(isinstance(f, access_log.RedactTokens) for f in access.filters)  # redaction survives uvicorn's setup
    logging.getLogger("uvicorn.error").warning("after uvicorn's setup")
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["msg"] == "after uvicorn's setup"
    uvicorn.Config(app=None, log_config=config, access_log=False).configure_logging()
    assert not logging.getLogger("uvicorn.access").handlers  # --access-log off: no access lines


def test_default_format_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert logging_setup.default_format() == "text"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert logging_setup.default_format() == "json"


def test_log_format_flag():
    for command in (["serve"], ["demo"]):
        assert _parser().parse_args([*command, "--log-format", "text"]).log_format == "text"
        assert _parser().parse_args(command).log_format is None  # decided by the terminal
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--log-format", "xml"])


INPUT = {"time": "2026-11-23T20:00:00Z", "server": {"name": "support"},
         "message": {"kind": "request", "method": "tools/call", "name": "send\nmessage"},
         "tool": {"name": "send\nmessage", "arguments": {"body": "s3cr3t"}}}


def stdout_decision(capsys: Any, fmt: str, result: dict[str, Any]) -> str:
    log = DecisionLog("stdout", line_format=fmt)
    log.log("id-1", "2026-11-23T20:00:00Z", INPUT, result, 1234, {"engine": "embedded"})
    log.close()
    return capsys.readouterr().out


def test_decision_on_stdout_json_is_a_log_line_and_an_opa_event(capsys):
    out = stdout_decision(capsys, "json", {"allow": False, "reasons": ["no"]})
    [line] = out.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["msg"]) == ("info", "mcp_policy_proxy.decision_log", "Decision Log")
    assert entry["type"] == "openpolicyagent.org/decision_logs" and re.fullmatch(r".+T.+\.\d{3}Z", entry["time"])
    event = {k: v for k, v in entry.items() if k not in ("time", "level", "logger", "msg", "type")}
    assert set(event) == {"decision_id", "timestamp", "path", "input", "result", "metrics", "labels"}
    assert event["input"]["tool"]["arguments"] == {"body": "[redacted]"} and "s3cr3t" not in out


def test_decision_on_stdout_text_is_one_readable_line(capsys):
    out = stdout_decision(capsys, "text", {"allow": False, "reasons": ["read-only server"]})
    [line] = out.splitlines()
    assert line.endswith(' INFO mcp_policy_proxy.decision_log: deny server=support tools/call send\\nmessage '
                         'reasons="read-only server" decision_id=id-1')
    assert "s3cr3t" not in out
    assert " allow server=support" in stdout_decision(capsys, "text", {"allow": True})
    assert " error server=support" in stdout_decision(capsys, "text", {"error": "engine down"})


def test_decision_log_service_config():
    from proxy.config import ConfigError, DecisionLogService, load

    base = {"upstream.url": "http://127.0.0.1:1/mcp"}
    assert load(None, base).decision_log["service"] is None
    service = load(None, {**base, "decision_log.service": {"url": "http://127.0.0.1:9/logs", "batch_size": 10,
                                                           "headers": {"Authorization": "Bearer s3cr3t"}}}
                   ).decision_log["service"]
    assert service == DecisionLogService(url="http://127.0.0.1:9/logs", batch_size=10,
                                         headers={"Authorization": "Bearer s3cr3t"})
    assert "s3cr3t" not in repr(service)  # the headers are secrets
    for bad, key in (({"batch_size": 10, "buffer_size_limit_events": 5}, "batch_size"), ({"colour": 1}, "colour"),
                     ({"url": "ftp://x/logs"}, "url"), ({"headers": {"A": "x\r\ny"}}, "headers.A"),
                     ({"min_delay_s": 10, "max_delay_s": 1}, "max_delay_s"), ({"url": None}, "url")):
        with pytest.raises(ConfigError) as exc:
            load(None, {**base, "decision_log.service": {"url": "http://127.0.0.1:9/logs", **bad}})
        assert exc.value.key == f"decision_log.service.{key}"
        assert "x\r\ny" not in str(exc.value)
