"""The daemon's log: priority prefixes under systemd's journal, JSON lines, secrets masked in every
shape; the warning for a provider whose API key is missing (start, check-config, /health)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from j1mskyd.config import ConfigError, load_config
from j1mskyd.logsetup import JsonFormatter, Masker, TextFormatter, priority, under_journal
from tests.daemon import Daemon, run_cli, write_config

SECRET = "sk-live-0123456789abcdefSECRET"  # a provider's API key, from the environment
TOKEN = "jsk_" + "Ab1-_" * 8 + "xyz"  # shaped like a J1MSKY token
EMAIL = "ann.lee@example.com"
STAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def record(msg: str, *args: object, level: int = logging.WARNING, exc: bool = False, **extra: object):
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"boom with {SECRET}")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("j1mskyd.test", level, __file__, 1, msg, args, exc_info)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


# -- the pieces -----------------------------------------------------------------------------------

def test_masker_hides_configured_keys_shaped_tokens_and_pii():
    mask = Masker([SECRET, None, "short"], pii=True)
    out = mask(f"key {SECRET}, token {TOKEN}, hook whsec_{'x' * 30}, Authorization: Bearer abc.def-123456 "
               f"from {EMAIL}; the word short stays")
    assert SECRET not in out and TOKEN not in out and "x" * 30 not in out and "abc.def-123456" not in out
    assert "[redacted]" in out and "jsk_[redacted]" in out and "whsec_[redacted]" in out
    assert "Bearer [redacted]" in out and "[email]" in out and "short stays" in out
    assert EMAIL in Masker([], pii=False)(EMAIL)  # personal data as the config says; secrets always
    assert TOKEN not in Masker([], pii=False)(TOKEN)


def test_priorities_are_syslogs():
    assert [priority(lvl) for lvl in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                      logging.CRITICAL)] == [7, 6, 4, 3, 2]


def test_journal_text_has_a_prefix_on_every_line_and_no_timestamp():
    fmt = TextFormatter(Masker([SECRET]), journal=True)
    lines = fmt.format(record("call failed with %s", SECRET, level=logging.ERROR, exc=True)).split("\n")
    assert len(lines) > 3  # the traceback
    assert all(line.startswith("<3>") for line in lines), lines
    assert lines[0] == "<3>ERROR j1mskyd.test: call failed with [redacted]"
    assert not any(STAMP.search(line) for line in lines)
    assert SECRET not in "\n".join(lines)


def test_plain_text_keeps_its_timestamp_unmasked():
    line = TextFormatter(Masker([SECRET], pii=True)).format(record("mail %s", EMAIL, level=logging.INFO))
    assert STAMP.match(line) and not line.startswith("<") and line.endswith("INFO j1mskyd.test: mail [email]")


def test_json_lines_carry_time_level_logger_message_extras_and_exception():
    fmt = JsonFormatter(Masker([SECRET]))
    doc = json.loads(fmt.format(record("spent %s", "$1", exc=True, agent_id="subagent_1", key=SECRET, n=3)))
    assert doc["level"] == "WARNING" and doc["logger"] == "j1mskyd.test" and doc["message"] == "spent $1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    assert doc["agent_id"] == "subagent_1" and doc["n"] == 3 and doc["key"] == "[redacted]"
    assert "RuntimeError: boom with [redacted]" in doc["exception"]
    assert "\n" not in fmt.format(record("two\nlines"))
    journal = JsonFormatter(Masker([]), journal=True).format(record("x", level=logging.INFO))
    assert journal.startswith("<6>{") and json.loads(journal[3:])["message"] == "x"


def test_journal_stream_must_name_our_stderr(tmp_path):
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)  # a redirect
        assert not under_journal({"JOURNAL_STREAM": "garbage"}, f)
        assert not under_journal({}, f)


def test_log_format_is_validated(tmp_path):
    path = write_config(tmp_path / "c.toml")
    base = path.read_text()
    path.write_text(base.replace("[server]\n", '[server]\nlog_format = "xml"\n', 1))
    with pytest.raises(ConfigError, match=r"server\.log_format: must be one of 'text', 'json'"):
        load_config(str(path), env={})
    path.write_text(base.replace("[server]\n", '[server]\nlog_format = "json"\n', 1))
    assert load_config(str(path), env={}).server.log_format == "json"
    assert load_config(str(path), env={"J1MSKY_LOG_FORMAT": "text"}).server.log_format == "text"


# -- a real daemon ---------------------------------------------------------------------------------

LEAKY_PLUGIN = f'''
import logging
J1MSKY_PLUGIN_API = 1

class Provider:
    async def complete(self, request):
        raise RuntimeError("not called")

def make(settings, session):
    # A plugin's bug: it logs its settings' key, a token and a customer's address.
    logging.getLogger("leaky").warning("built with key %s, token %s, for %s", settings.api_key,
                                       {TOKEN!r}, {EMAIL!r})
    return Provider()

def register(registry):
    registry.add_provider("leaky", make)
'''


def daemon_config(tmp_path: Path, log_format: str) -> Path:
    plugins = tmp_path / "plugins.d"
    plugins.mkdir(mode=0o755)
    (plugins / "leaky.py").write_text(LEAKY_PLUGIN)
    (plugins / "README").write_text("not a plugin\n")
    config = write_config(tmp_path / "config.toml", plugins_dir=plugins)
    text = config.read_text().replace('[server]\n', f'[server]\nlog_format = "{log_format}"\n'
                                      f'secrets_file = "{tmp_path / "no-secrets.env"}"\n', 1)
    text = text.replace("[plugins]\n", "[plugins]\nrequire_root = false\n", 1)
    text += ('\n[providers.leaky]\nplugin = "leaky"\napi_key_env = "J1MSKY_TEST_LEAKY_KEY"\n'
             '\n[providers.nokey]\nplugin = "offline"\napi_key_env = "J1MSKY_TEST_UNSET_KEY"\n')
    config.write_text(text)
    return config


def run_daemon(tmp_path: Path, log_format: str, journal: bool) -> tuple[list[str], dict]:
    """Start a daemon (stderr to a file; JOURNAL_STREAM naming that file when ``journal``), read
    /health, stop it; its log lines and the health body."""
    config = daemon_config(tmp_path, log_format)
    log_path = tmp_path / "daemon.log"
    log_path.touch()
    st = os.stat(log_path)  # the daemon appends to this very file: its stderr
    env = {"J1MSKY_TEST_LEAKY_KEY": SECRET}
    if journal:
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    daemon = Daemon(tmp_path, tmp_path / "state", config, env=env)
    try:
        daemon.start()
        _, health = daemon.request("GET", "/api/health")
        daemon.stop()
    finally:
        daemon.close()
    return log_path.read_text().splitlines(), health


def _common_checks(text: str, health: dict) -> None:
    assert SECRET not in text and TOKEN not in text and EMAIL not in text
    assert "[redacted]" in text and "jsk_[redacted]" in text and "[email]" in text
    assert "J1MSKY_TEST_UNSET_KEY" in text  # the warning names the variable
    assert "README" not in text  # ignored quietly (debug only)
    nokey = health["providers"]["nokey"]
    assert nokey["status"] == "unconfigured" and nokey["available"] is False
    assert health["providers"]["offline"]["status"] == "available"
    assert health["status"] == "degraded"
    assert "provider nokey: unconfigured (J1MSKY_TEST_UNSET_KEY not set)" in health["reasons"]


def test_under_the_journal_every_line_has_its_priority_and_no_timestamp(tmp_path):
    lines, health = run_daemon(tmp_path, "text", journal=True)
    _common_checks("\n".join(lines), health)
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not [line for line in lines if STAMP.match(line[3:])]
    [missing] = [line for line in lines if "J1MSKY_TEST_UNSET_KEY" in line]
    assert missing.startswith("<4>WARNING j1mskyd: provider nokey: no API key")
    assert [line for line in lines if line.startswith("<6>INFO j1mskyd: j1mskyd ") and "listening" in line]
    assert [line for line in lines if line.startswith("<4>WARNING leaky: built with key [redacted]")]


def test_without_the_journal_lines_keep_their_timestamps(tmp_path):
    lines, health = run_daemon(tmp_path, "text", journal=False)
    _common_checks("\n".join(lines), health)
    assert lines and all(STAMP.match(line) for line in lines if line.strip()), lines
    assert not [line for line in lines if line.startswith("<")]


def test_json_lines_parse_and_keep_secrets_masked(tmp_path):
    lines, health = run_daemon(tmp_path, "json", journal=False)
    _common_checks("\n".join(lines), health)
    docs = [json.loads(line) for line in lines if line.strip()]
    assert docs and all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    [leak] = [d for d in docs if d["logger"] == "leaky"]
    assert leak["level"] == "WARNING" and leak["message"].startswith("built with key [redacted]")
    assert [d for d in docs if d["level"] == "WARNING" and "J1MSKY_TEST_UNSET_KEY" in d["message"]]


def test_json_under_the_journal_has_the_prefix_before_the_object(tmp_path):
    lines, health = run_daemon(tmp_path, "json", journal=True)
    _common_checks("\n".join(lines), health)
    for line in lines:
        m = re.match(r"<([0-7])>(\{.*\})$", line)
        assert m, line
        assert int(m.group(1)) == priority(getattr(logging, json.loads(m.group(2))["level"]))


def test_check_config_warns_of_every_provider_without_its_key(tmp_path):
    config = daemon_config(tmp_path, "text")
    done = run_cli("check-config", "--config", str(config), cwd=tmp_path,
                   env={"J1MSKY_TEST_LEAKY_KEY": SECRET})
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "provider nokey: no API key: J1MSKY_TEST_UNSET_KEY" in warnings[0]
    assert SECRET not in done.stdout + done.stderr
    both = run_cli("check-config", "--config", str(config), cwd=tmp_path, env={})
    assert sorted(re.findall(r"provider (\w+): no API key", both.stderr)) == ["leaky", "nokey"]


async def test_health_schema_names_the_provider_statuses(client):
    doc = await (await client.get("/api/openapi.json")).json()
    schema = doc["paths"]["/api/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    provider = schema["properties"]["providers"]["additionalProperties"]
    assert provider["properties"]["status"]["enum"] == ["available", "unconfigured", "unavailable"]
    body = await (await client.get("/api/health")).json()
    assert {p["status"] for p in body["providers"].values()} == {"available"}
