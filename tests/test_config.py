"""Config loading: embedded default, shipped file, validation, env overrides, secrets."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from j1mskyd.config import (
    Config,
    ConfigError,
    ConfigIssue,
    ServerConfig,
    embedded_default,
    load_config,
)

SHIPPED = Path(__file__).resolve().parent.parent / "etc" / "j1msky" / "config.toml"
SECRET = "sk-test-SEKRIT-0123456789"

PRICES = {  # business-rules.md, model catalogue
    "opus": ("claude-opus-4-6", 0.015, 0.075, 0.015, "sonnet"),
    "sonnet": ("claude-sonnet-4-6", 0.003, 0.015, 0.003, "k2p5"),
    "k2p5": ("k2p5", 0.0005, 0.0015, 0.001, "minimax-m2.5"),
    "minimax-m2.5": ("MiniMax-M2.5", 0.0001, 0.0001, 0.001, "k2p5"),
    "codex": ("codex", 0.002, 0.002, 0.002, "minimax-m2.5"),
}
REAL_PROVIDERS = {"opus": "anthropic", "sonnet": "anthropic", "k2p5": "kimi-coding",
                  "minimax-m2.5": "minimax-portal", "codex": "openai-codex"}
TEAMS = {
    "team_coding": ("Code Team", ("k2p5", "sonnet"), "active"),
    "team_creative": ("Creative Team", ("opus", "k2p5"), "active"),
    "team_research": ("Research Team", ("sonnet", "k2p5"), "active"),
    "team_business": ("Business Team", ("opus", "sonnet"), "standby"),
}

MINIMAL = """
[providers.p]
plugin = "offline"

[models.m]
provider = "p"
upstream = "up"
input_per_1k = 0.001
output_per_1k = 0.002
blended_per_1k = 0.0015
"""


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "config.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


@pytest.fixture
def env(tmp_path):
    # Hermetic: no real secrets file, no state dir in the repo.
    return {"J1MSKY_SECRETS_FILE": str(tmp_path / "absent.env"),
            "XDG_STATE_HOME": str(tmp_path / "state")}


def issues_of(text: str, write, env) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(write(text), env)
    return info.value.issues


def keys_of(issues: list[ConfigIssue]) -> set[str]:
    return {i.key for i in issues}


def check_catalogue(cfg: Config, extra: tuple[str, ...] = ()) -> None:
    """The 5 business models of business-rules.md, in order, then ``extra`` aliases."""
    assert list(cfg.models) == list(PRICES) + list(extra)
    for alias, (upstream, inp, out, blended, fallback) in PRICES.items():
        m = cfg.models[alias]
        assert (m.alias, m.upstream, m.fallback) == (alias, upstream, fallback)
        assert (m.input_per_1k, m.output_per_1k, m.blended_per_1k) == (inp, out, blended)
    for tid, (name, members, status) in TEAMS.items():
        t = cfg.teams[tid]
        assert (t.id, t.name, t.members, t.status) == (tid, name, members, status)
    assert cfg.teams["team_coding"].specialty == ("programming", "debugging", "architecture")
    # Spot check of business-rules.md: sonnet quote 3000 in + 1200 out -> 0.027.
    s = cfg.models["sonnet"]
    assert round(3 * s.input_per_1k + 1.2 * s.output_per_1k, 4) == 0.027


# ------------------------------------------------------------------ embedded default

def test_embedded_default_contents():
    cfg = embedded_default()
    assert cfg.source == "<embedded>"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert list(cfg.providers) == ["offline"]
    assert cfg.providers["offline"].plugin == "offline"
    assert cfg.providers["offline"].api_key is None
    assert {m.provider for m in cfg.models.values()} == {"offline"}
    check_catalogue(cfg)
    assert cfg.runtime == type(cfg.runtime)()  # untouched defaults
    assert cfg.store.synchronous == "full"  # a power cut loses no accepted agent (issue 19)
    assert cfg.webhooks.file_sink_dirs == ()  # no file webhooks until the operator opens a directory
    assert os.path.isabs(cfg.server.state_dir)


def test_no_path_uses_embedded_default_or_j1msky_config(write, env):
    assert load_config(None, env).source == "<embedded>"
    path = write(MINIMAL)
    assert load_config(None, {**env, "J1MSKY_CONFIG": path}).source == path


def test_default_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}).server.state_dir == str(tmp_path / ".j1msky")
    xdg = {"XDG_STATE_HOME": "/srv/state"}
    assert load_config(None, xdg).server.state_dir == "/srv/state/j1msky"
    # The XDG spec says a relative value is to be ignored.
    assert load_config(None, {"XDG_STATE_HOME": "rel"}).server.state_dir == str(tmp_path / ".j1msky")
    assert ServerConfig().state_dir  # the dataclass default is usable on its own


# ------------------------------------------------------------------- shipped config

def test_shipped_config_loads_and_routes_to_real_providers(env):
    cfg = load_config(SHIPPED, env)
    assert cfg.source == str(SHIPPED)
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 8080)
    assert cfg.server.state_dir == "/var/lib/j1msky"
    assert cfg.webhooks.file_sink_dirs == ("/var/log/j1msky",)  # the unit's LogsDirectory
    assert cfg.store.synchronous == "full"  # a power cut loses no accepted agent (issue 19)
    # The business catalogue on real providers, plus one alias "offline" on the built-in offline
    # provider: a fresh install (no keys) can run agents, and no business model is faked.
    check_catalogue(cfg, extra=("offline",))
    assert {a: m.provider for a, m in cfg.models.items()} == {**REAL_PROVIDERS, "offline": "offline"}
    off = cfg.models["offline"]
    assert (off.upstream, off.fallback) == ("offline", None)
    assert (off.input_per_1k, off.output_per_1k, off.blended_per_1k) == (0.0, 0.0, 0.0)
    assert all(m.fallback != "offline" for m in cfg.models.values())  # never reached by a fallback
    assert all("offline" not in t.members for t in cfg.teams.values())
    p = cfg.providers
    assert set(p) == {"anthropic", "kimi-coding", "minimax-portal", "openai-codex", "offline"}
    assert (p["anthropic"].plugin, p["anthropic"].base_url, p["anthropic"].hourly_limit) == (
        "anthropic", "https://api.anthropic.com", 50)
    assert p["kimi-coding"].plugin == "openai_compat"
    assert p["kimi-coding"].hourly_limit == 100
    assert p["minimax-portal"].base_url == "https://api.minimax.io/v1"
    assert p["openai-codex"].base_url == "https://api.openai.com/v1"
    assert all(s.hourly_limit == 100 for n, s in p.items() if n not in ("anthropic", "offline"))
    assert all(s.api_key is None for s in p.values())


def test_shipped_config_takes_keys_from_env(env):
    cfg = load_config(SHIPPED, {**env, "ANTHROPIC_API_KEY": SECRET})
    assert cfg.providers["anthropic"].api_key == SECRET
    assert cfg.providers["kimi-coding"].api_key is None


# ---------------------------------------------------------------------- validation

def test_unknown_keys_at_every_level(write, env):
    text = "bogus = 1\n" + MINIMAL.replace('upstream = "up"', 'upstream = "up"\ncolour = "red"') + """
[server]
prot = 8080
[runtime]
nope = 1
[store]
mode = "x"
[plugins]
extra = true
[providers.p.options]
anything = "goes"
nested = {deep = 1}
[teams.t]
name = "T"
members = ["m"]
size = 3
[weird]
"""
    issues = issues_of(text, write, env)
    assert keys_of(issues) == {
        "bogus", "models.m.colour", "server.prot", "runtime.nope", "store.mode",
        "plugins.extra", "teams.t.size", "weird"}
    assert {i.file for i in issues} == {write(text)}
    by_key = {i.key: i.reason for i in issues}
    assert "did you mean 'port'" in by_key["server.prot"]
    assert by_key["weird"] == by_key["bogus"] == "unknown section"


def test_api_key_in_file_refused_without_echoing_it(write, env):
    text = MINIMAL.replace('plugin = "offline"', f'plugin = "offline"\napi_key = "{SECRET}"')
    with pytest.raises(ConfigError) as info:
        load_config(write(text), env)
    assert keys_of(info.value.issues) == {"providers.p.api_key"}
    assert "api_key_env" in info.value.issues[0].reason
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("section, line, key, reason", [
    ("server", 'port = "8080"', "server.port", "must be an integer, not string"),
    ("server", "port = 8080.0", "server.port", "must be an integer, not float"),
    ("server", "port = 70000", "server.port", "must be between 0 and 65535"),
    ("server", "port = true", "server.port", "must be an integer, not boolean"),
    ("server", 'log_level = "loud"', "server.log_level", "must be one of"),
    ("server", 'host = ""', "server.host", "must not be empty"),
    ("runtime", "max_concurrency = 0", "runtime.max_concurrency", "must be between 1 and 100000"),
    ("runtime", "max_attempts = false", "runtime.max_attempts", "not boolean"),
    ("runtime", "default_timeout = 0", "runtime.default_timeout", "must be > 0"),
    ("runtime", "default_timeout = nan", "runtime.default_timeout", "finite"),
    ("runtime", "default_timeout = true", "runtime.default_timeout", "must be a number"),
    ("runtime", "default_timeout = 4000", "runtime.default_timeout", "max_timeout"),
    ("store", 'synchronous = "off"', "store.synchronous", "'normal', 'full'"),
    ("plugins", 'disabled = "x"', "plugins.disabled", "array of non-empty strings"),
    ("plugins", 'require_root = "yes"', "plugins.require_root", "true or false"),
    ("webhooks", 'file_sink_dirs = ["var/log"]', "webhooks.file_sink_dirs", "not an absolute path"),
    ("runtime", "max_concurrency = 99999999999999999", "runtime.max_concurrency", "between 1 and 100000"),
    ("limits", "window_seconds = 1e-300", "limits.window_seconds", ">= 1"),
    ("webhooks", 'file_sink_dirs = ["/"]', "webhooks.file_sink_dirs", "anywhere the daemon may"),
    ("webhooks", 'file_sink_dirs = ["//."]', "webhooks.file_sink_dirs", "anywhere the daemon may"),
    ("webhooks", 'file_sink_dirs = "/var/log"', "webhooks.file_sink_dirs", "array of non-empty strings"),
])
def test_bad_values(write, env, section, line, key, reason):
    issues = issues_of(f"{MINIMAL}\n[{section}]\n{line}\n", write, env)
    assert [i.key for i in issues] == [key]
    assert reason in issues[0].reason


def test_ints_accepted_where_floats_expected(write, env):
    cfg = load_config(write(MINIMAL + "\n[runtime]\ndefault_timeout = 30\n"), env)
    assert cfg.runtime.default_timeout == 30.0
    assert type(cfg.runtime.default_timeout) is float


def test_port_zero_allowed_for_tests(write, env):
    assert load_config(write(MINIMAL + "\n[server]\nport = 0\n"), env).server.port == 0


def test_a_base_url_with_credentials_or_a_bad_port_is_refused_without_echoing_them(write, env):
    for url, reason in (("http://user:sk-URLSECRET99@127.0.0.1:18113/v1", "user:password@"),
                        ("http://127.0.0.1:99999/v1", "port")):
        text = MINIMAL.replace('plugin = "offline"', f'plugin = "offline"\nbase_url = "{url}"', 1)
        issues = issues_of(text, write, env)
        assert [i.key for i in issues] == ["providers.p.base_url"] and reason in issues[0].reason, issues
        assert "URLSECRET" not in str(ConfigError(issues))


@pytest.mark.parametrize("edit, key, reason", [
    (('provider = "p"', 'provider = "nowhere"'), "models.m.provider", "no provider named 'nowhere'"),
    (('upstream = "up"', 'upstream = "up"\nfallback = "ghost"'), "models.m.fallback", "no model named 'ghost'"),
    (('upstream = "up"', 'upstream = "up"\nfallback = "m"'), "models.m.fallback", "itself"),
    (('input_per_1k = 0.001', 'input_per_1k = -0.001'), "models.m.input_per_1k", ">= 0"),
    (('input_per_1k = 0.001\n', ''), "models.m.input_per_1k", "required"),
    (('plugin = "offline"', 'plugin = ""'), "providers.p.plugin", "must not be empty"),
    (('plugin = "offline"', 'plugin = "no such"'), "providers.p.plugin", "plugin kind"),
    (('plugin = "offline"', 'plugin = "offline"\nbase_url = "ftp://x"'), "providers.p.base_url", "http"),
    (('plugin = "offline"', 'plugin = "offline"\nmax_concurrency = 0'), "providers.p.max_concurrency", "between 1 and 100000"),
    (('plugin = "offline"', 'plugin = "offline"\ntimeout = -1'), "providers.p.timeout", "> 0"),
    (('plugin = "offline"', 'plugin = "offline"\noptions = 3'), "providers.p.options", "must be a table"),
    (('plugin = "offline"', 'plugin = "offline"\napi_key_env = "not a var"'), "providers.p.api_key_env",
     "environment variable name"),
])
def test_bad_provider_and_model_entries(write, env, edit, key, reason):
    issues = issues_of(MINIMAL.replace(*edit), write, env)
    assert [i.key for i in issues] == [key]
    assert reason in issues[0].reason


def test_team_checks(write, env):
    text = MINIMAL + """
[teams.t]
name = "T"
members = ["m", "ghost"]
status = "sleeping"
[teams.empty]
name = "E"
members = []
[teams.nameless]
members = ["m"]
"""
    by_key = {i.key: i.reason for i in issues_of(text, write, env)}
    assert by_key == {
        "teams.t.members": "no model named 'ghost'",
        "teams.t.status": "must be one of 'active', 'standby'",
        "teams.empty.members": "must not be empty",
        "teams.nameless.name": "required",
    }


def test_many_issues_collected_in_one_error(write, env):
    text = """
[server]
port = -1
[providers.p]
plugin = "offline"
hourly_limit = true
[models.a]
provider = "missing"
upstream = "x"
input_per_1k = "cheap"
output_per_1k = 0
blended_per_1k = 0
fallback = "b"
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(text), {**env, "J1MSKY_MAX_CONCURRENCY": "lots"})
    assert keys_of(info.value.issues) == {
        "server.port", "providers.p.hourly_limit", "models.a.provider",
        "models.a.input_per_1k", "models.a.fallback", "env J1MSKY_MAX_CONCURRENCY"}
    lines = str(info.value).splitlines()
    assert len(lines) == 6
    assert f"{write(text)}: server.port: must be between 0 and 65535" in lines


def test_no_models_is_an_error(write, env):
    issues = issues_of('[providers.p]\nplugin = "offline"\n', write, env)
    assert [(i.key, i.reason) for i in issues] == [("models", "at least one model is required")]


def test_section_of_wrong_type(write, env):
    issues = issues_of("server = 5\n" + MINIMAL, write, env)
    assert [(i.key, i.reason) for i in issues] == [("server", "must be a table, not integer")]


def test_toml_syntax_error_names_file_and_reason(write, env):
    path = write("[server]\nport = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    [issue] = info.value.issues
    assert issue.file == path
    assert issue.reason.startswith("invalid TOML:") and "line 2" in issue.reason
    assert str(info.value).startswith(f"{path}: invalid TOML")


def test_missing_file_is_an_error(tmp_path, env):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    assert info.value.issues == [ConfigIssue(path, "", "cannot read: No such file or directory")]


# -------------------------------------------------------------------- env overrides

def test_env_overrides(write, env, tmp_path):
    cfg = load_config(write(MINIMAL), {
        **env, "J1MSKY_HOST": "::1", "J1MSKY_PORT": "9090", "J1MSKY_STATE_DIR": "/tmp/st",
        "J1MSKY_LOG_LEVEL": "DEBUG", "J1MSKY_PLUGINS_DIR": "/opt/p", "J1MSKY_MAX_CONCURRENCY": "7",
        "J1MSKY_PORT_UNRELATED": "x"})
    assert (cfg.server.host, cfg.server.port, cfg.server.state_dir) == ("::1", 9090, "/tmp/st")
    assert cfg.server.log_level == "debug"
    assert cfg.plugins.dropin_dir == "/opt/p"
    assert cfg.runtime.max_concurrency == 7


def test_env_overrides_win_over_file_and_empty_means_unset(write, env):
    path = write(MINIMAL + '\n[server]\nport = 1234\nhost = "10.0.0.1"\n')
    cfg = load_config(path, {**env, "J1MSKY_PORT": "4321", "J1MSKY_HOST": ""})
    assert (cfg.server.host, cfg.server.port) == ("10.0.0.1", 4321)


def test_invalid_env_overrides(write, env):
    with pytest.raises(ConfigError) as info:
        load_config(write(MINIMAL), {**env, "J1MSKY_PORT": "http", "J1MSKY_MAX_CONCURRENCY": "0",
                                     "J1MSKY_LOG_LEVEL": "chatty"})
    assert {(i.file, i.key) for i in info.value.issues} == {
        ("<env>", "env J1MSKY_PORT"), ("<env>", "env J1MSKY_MAX_CONCURRENCY"),
        ("<env>", "env J1MSKY_LOG_LEVEL")}
    assert "<env>: env J1MSKY_PORT: must be an integer" in str(info.value)
    for spelt in ("1_000", "+80", "８０", "0x50"):  # int() took the first three
        with pytest.raises(ConfigError, match="must be an integer"):
            load_config(write(MINIMAL), {**env, "J1MSKY_PORT": spelt})


def test_env_overrides_apply_to_embedded_default(env):
    assert load_config(None, {**env, "J1MSKY_PORT": "0"}).server.port == 0


# -------------------------------------------------------------------------- secrets

KEYED = MINIMAL.replace('plugin = "offline"', 'plugin = "offline"\napi_key_env = "P_KEY"')


def test_secrets_file_parsing(write, tmp_path):
    secrets = tmp_path / "secrets.env"
    secrets.write_text(
        "# comment\n\n"
        f'export P_KEY="{SECRET}"\n'
        "  OTHER = 'single quoted'  \n"
        "EMPTY=\n"
        "PLAIN=a=b#c\n")
    secrets.chmod(0o600)
    env = {"J1MSKY_SECRETS_FILE": str(secrets)}
    assert load_config(write(KEYED), env).providers["p"].api_key == SECRET
    for var, want in (("OTHER", "single quoted"), ("PLAIN", "a=b#c"), ("EMPTY", None),
                      ("UNSET", None)):
        text = KEYED.replace('"P_KEY"', f'"{var}"')
        assert load_config(write(text), env).providers["p"].api_key == want


def test_env_wins_over_secrets_file(write, tmp_path):
    secrets = tmp_path / "secrets.env"
    secrets.write_text("P_KEY=from-file\n")
    secrets.chmod(0o600)
    env = {"J1MSKY_SECRETS_FILE": str(secrets)}
    assert load_config(write(KEYED), {**env, "P_KEY": "from-env"}).providers["p"].api_key == "from-env"
    # An empty variable counts as unset, so the file still answers.
    assert load_config(write(KEYED), {**env, "P_KEY": ""}).providers["p"].api_key == "from-file"


def test_missing_secrets_file_is_fine(write, env):
    assert load_config(write(KEYED), env).providers["p"].api_key is None


def test_secrets_file_that_is_a_directory_is_an_issue(write, tmp_path):
    env = {"J1MSKY_SECRETS_FILE": str(tmp_path)}
    with pytest.raises(ConfigError) as info:
        load_config(write(KEYED), env)
    [issue] = info.value.issues
    assert (issue.file, issue.key) == (str(tmp_path), "server.secrets_file")
    assert issue.reason.startswith("cannot read secrets file")


def test_malformed_secrets_line_reported_without_content(write, tmp_path):
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"P_KEY=ok\n{SECRET}\n")
    secrets.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(write(KEYED), {"J1MSKY_SECRETS_FILE": str(secrets)})
    assert info.value.issues == [ConfigIssue(str(secrets), "line 2", "expected NAME=VALUE")]
    assert SECRET not in str(info.value)


def test_group_readable_secrets_file_warns(write, tmp_path, caplog):
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"P_KEY={SECRET}\n")
    secrets.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="j1mskyd.config"):
        load_config(write(KEYED), {"J1MSKY_SECRETS_FILE": str(secrets)})
    assert "readable by group or others" in caplog.text
    assert SECRET not in caplog.text


def test_secret_never_in_repr_or_error(write, env):
    bad = KEYED + "\n[server]\nport = -5\n"
    keyed_env = {**env, "P_KEY": SECRET}
    cfg = load_config(write(KEYED), keyed_env)
    assert cfg.providers["p"].api_key == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    with pytest.raises(ConfigError) as info:
        load_config(write(bad), keyed_env)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.issues)


def test_secrets_file_not_read_when_env_has_every_key(write, tmp_path):
    # A directory would be an error if read: proves the file is only read on demand.
    env = {"J1MSKY_SECRETS_FILE": str(tmp_path), "P_KEY": "k"}
    assert load_config(write(KEYED), env).providers["p"].api_key == "k"


# ------------------------------------------------------------------------ immutability

def test_config_is_read_only():
    cfg = embedded_default()
    with pytest.raises(TypeError):
        cfg.models["new"] = cfg.models["opus"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del cfg.teams["team_coding"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        cfg.providers["x"] = cfg.providers["offline"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]
    # dataclasses.replace is the way to derive a variant (e.g. in tests).
    assert dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=0)).server.port == 0


def test_shipped_config_reads_the_default_secrets_file_path(tmp_path):
    # Regression: with no J1MSKY_SECRETS_FILE the default path must be a string,
    # not the slots dataclass's member descriptor.
    from j1mskyd.config import DEFAULT_SECRETS_FILE
    cfg = load_config(SHIPPED, env={})
    assert cfg.server.secrets_file == DEFAULT_SECRETS_FILE
    assert cfg.budget.daily_budget == 50.0 and cfg.budget.monthly_ceiling == 1500.0


def test_each_problem_stays_on_its_one_line_whatever_the_file_names(write, env):
    # A key spelt with a newline or ESC in quotes was echoed raw: it split the promised
    # "file: key: reason" line (and ran in the terminal).
    with pytest.raises(ConfigError) as info:
        load_config(write(MINIMAL + '\n[server]\n"pr\\not\\u001b[31m" = 1\n'), env)
    text = str(info.value)
    assert len(text.splitlines()) == len(info.value.issues) == 1 and "\x1b" not in text
    assert "pr\\not\\x1b[31m" in text
