"""Every guard of the plugin loader (anchors-style.md section 3.3), on real files.

Tests run as root, so ownership checks are exercised by chowning to 65534.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from j1mskyd.plugins import J1MSKY_PLUGIN_API, PluginError, PluginRegistry, build_provider, load_plugins
from j1mskyd.providers import CompletionRequest, CompletionResult, ProviderSettings

BUILTIN = Path(__file__).resolve().parent.parent / "j1mskyd" / "builtin_plugins"

GOOD = """
from j1mskyd.providers import CompletionResult
J1MSKY_PLUGIN_API = 1

class Echo:
    def __init__(self, settings, session):
        self.settings = settings
    async def complete(self, request):
        return CompletionResult(text="echo:" + request.prompt, input_tokens=1, output_tokens=2, model=request.model)

def register(registry):
    registry.add_provider("echo", Echo)
"""


@pytest.fixture
def dropin(tmp_path: Path) -> Path:
    d = tmp_path / "plugins.d"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o755)
    return d


def write(d: Path, name: str, source: str, mode: int = 0o644) -> Path:
    p = d / name
    p.write_text(textwrap.dedent(source))
    os.chmod(p, mode)
    return p


def marker_source(marker: Path, api: str = "J1MSKY_PLUGIN_API = 1") -> str:
    """A plugin whose mere import leaves ``marker`` behind."""
    return f"open({str(marker)!r}, 'w').close()\n{api}\ndef register(registry):\n    pass\n"


def load(dropin: Path | None, builtin: Path = BUILTIN, **kw) -> PluginRegistry:
    registry = PluginRegistry()
    load_plugins(registry, builtin, dropin, **kw)
    return registry


def entry(registry: PluginRegistry, name: str) -> dict:
    [found] = [e for e in registry.report() if e["name"] == name]
    return found


def test_builtins_load_and_report():
    registry = load(None)
    assert registry.provider_kinds() == ["anthropic", "offline", "openai_compat"]
    assert J1MSKY_PLUGIN_API == 1
    for name in ("anthropic", "offline", "openai_compat"):
        e = entry(registry, name)
        assert e["source"] == "builtin" and e["status"] == "loaded" and e["reason"] is None
        assert e["provides"] == {"providers": [name], "sinks": []}


def test_missing_dropin_dir_is_silently_skipped(tmp_path):
    registry = load(tmp_path / "nope")
    assert {e["source"] for e in registry.report()} == {"builtin"}


async def test_good_dropin_works_end_to_end(dropin):
    write(dropin, "echo.py", GOOD)
    registry = load(dropin)
    e = entry(registry, "echo")
    assert (e["source"], e["status"], e["provides"]["providers"]) == ("dropin", "loaded", ["echo"])
    assert e["path"] == str(dropin / "echo.py")
    assert sys.modules["j1msky_plugins.echo"].__file__ == str(dropin / "echo.py")
    async with aiohttp.ClientSession() as session:
        provider = build_provider(registry, ProviderSettings(name="e", plugin="echo"), session)
        result = await provider.complete(CompletionRequest(model="m", prompt="hi"))
    assert result == CompletionResult(text="echo:hi", input_tokens=1, output_tokens=2, model="m")


def test_sinks_are_registered(dropin):
    write(dropin, "hook.py", """
        J1MSKY_PLUGIN_API = 1
        def register(registry):
            registry.add_sink("webhook_x", lambda settings, session: None)
    """)
    registry = load(dropin)
    assert "webhook_x" in registry.sink_kinds()  # beside the built-in http, slack and file sinks
    assert entry(registry, "hook")["provides"] == {"providers": [], "sinks": ["webhook_x"]}
    assert callable(registry.sink_factory("webhook_x"))


def test_files_load_in_sorted_order(dropin):
    for name in ("zeta.py", "alpha.py", "mid.py"):
        write(dropin, name, "J1MSKY_PLUGIN_API = 1\ndef register(registry):\n    pass\n")
    names = [e["name"] for e in load(dropin).report() if e["source"] == "dropin"]
    assert names == ["alpha", "mid", "zeta"]


# -- directory trust ----------------------------------------------------------


def test_group_writable_dir_refuses_everything(dropin, tmp_path):
    write(dropin, "a.py", marker_source(tmp_path / "ran"))
    os.chmod(dropin, 0o775)
    registry = load(dropin)
    [e] = [e for e in registry.report() if e["source"] == "dropin"]
    assert e["status"] == "refused" and e["path"] == str(dropin)
    assert "group- or world-writable" in e["reason"]
    assert not (tmp_path / "ran").exists()


def test_world_writable_parent_refuses(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(parent, 0o777)  # no sticky bit: anyone could rename plugins.d away
    d = parent / "plugins.d"
    d.mkdir()
    os.chmod(d, 0o755)
    write(d, "a.py", marker_source(tmp_path / "ran"))
    [e] = [e for e in load(d).report() if e["source"] == "dropin"]
    assert e["status"] == "refused" and str(parent) in e["reason"] and "writable" in e["reason"]
    assert not (tmp_path / "ran").exists()


def test_symlinked_dir_refused(dropin, tmp_path):
    link = tmp_path / "link.d"
    link.symlink_to(dropin)
    write(dropin, "echo.py", GOOD)
    [e] = [e for e in load(link).report() if e["source"] == "dropin"]
    assert e["status"] == "refused" and "symlink" in e["reason"]


def test_non_root_dir_refused(dropin):
    os.chown(dropin, 65534, 65534)
    [e] = [e for e in load(dropin).report() if e["source"] == "dropin"]
    assert e["status"] == "refused" and "uid 65534" in e["reason"]
    # Without require_root the same directory is acceptable (development setups).
    write(dropin, "echo.py", GOOD)
    assert "echo" in load(dropin, require_root=False).provider_kinds()


# -- file-name filter ---------------------------------------------------------


@pytest.mark.parametrize("filename, why", [
    ("x.py.dpkg-old", "package manager leftover"),
    ("x.py.dpkg-dist", "package manager leftover"),
    ("x.py~", "editor backup"),
    (".x.py", "hidden file"),
    ("x.py.swp", "editor or backup leftover"),
    ("Upper.py", "does not match"),
    ("my-plugin.py", "does not match"),
    ("notes.py.txt", "does not match"),
])
def test_name_filter_skips_and_reports(dropin, tmp_path, filename, why):
    write(dropin, filename, marker_source(tmp_path / "ran"))
    registry = load(dropin)
    [e] = [e for e in registry.report() if e["source"] == "dropin"]
    assert e["status"] == "refused" and e["reason"].startswith("skipped:") and why in e["reason"]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("filename", ["README", "notes.txt", "plugins.conf", ".keep"])
def test_files_that_are_not_plugins_are_ignored_quietly(dropin, tmp_path, caplog, filename):
    """The packaged README (and any file not named like Python) is listed as ignored, with no
    warning at every start; a .py file beside it that fails a check is still refused loudly."""
    write(dropin, filename, marker_source(tmp_path / "ran"))
    write(dropin, "noapi.py", "def register(registry):\n    pass\n")
    with caplog.at_level(logging.DEBUG, logger="j1mskyd.plugins"):
        registry = load(dropin)
    [e] = [e for e in registry.report() if e["source"] == "dropin" and e["path"].endswith(filename)]
    assert e["status"] == "ignored" and e["reason"].startswith("not a plugin"), e
    assert not (tmp_path / "ran").exists()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in loud if filename in r.getMessage()] == []
    assert entry(registry, "noapi")["status"] == "refused"
    assert [r for r in loud if "noapi" in r.getMessage() and "refused" in r.getMessage()]


def test_the_packaged_readme_is_ignored_not_refused(dropin):
    """The drop-in dir as the .deb ships it (etc/j1msky/plugins.d/README): nothing refused."""
    shipped = Path(__file__).resolve().parents[1] / "etc" / "j1msky" / "plugins.d" / "README"
    write(dropin, "README", shipped.read_text())
    report = load(dropin).report()
    assert [e["status"] for e in report if e["source"] == "dropin"] == ["ignored"]
    assert not [e for e in report if e["status"] == "refused"]


def test_dunder_entries_are_ignored(dropin):
    (dropin / "__pycache__").mkdir()
    write(dropin, "__init__.py", "")
    assert [e for e in load(dropin).report() if e["source"] == "dropin"] == []


# -- file trust ----------------------------------------------------------------


def test_symlinked_file_refused(dropin, tmp_path):
    real = write(tmp_path, "real.py", marker_source(tmp_path / "ran"))
    (dropin / "link.py").symlink_to(real)
    e = entry(load(dropin), "link")
    assert e["status"] == "refused" and "symlink" in e["reason"]
    assert not (tmp_path / "ran").exists()


def test_non_root_file_refused(dropin, tmp_path):
    p = write(dropin, "theirs.py", marker_source(tmp_path / "ran"))
    os.chown(p, 65534, 65534)
    e = entry(load(dropin), "theirs")
    assert e["status"] == "refused" and e["reason"] == "owned by uid 65534, not root"
    assert not (tmp_path / "ran").exists()


def test_group_writable_file_refused(dropin, tmp_path):
    write(dropin, "gw.py", marker_source(tmp_path / "ran"), mode=0o664)
    e = entry(load(dropin), "gw")
    assert e["status"] == "refused" and "writable" in e["reason"]
    assert not (tmp_path / "ran").exists()


def test_directory_named_like_a_plugin_refused(dropin):
    (dropin / "pkg.py").mkdir()
    e = entry(load(dropin), "pkg")
    assert e["status"] == "refused" and e["reason"] == "not a regular file"


def test_oversized_file_refused(dropin):
    write(dropin, "big.py", "J1MSKY_PLUGIN_API = 1\n" + "#" * (1 << 20) + "\n")
    e = entry(load(dropin), "big")
    assert e["status"] == "refused" and "larger than" in e["reason"]


# -- declared API version --------------------------------------------------------


@pytest.mark.parametrize("api, why", [
    ("", "no top-level J1MSKY_PLUGIN_API"),
    ("J1MSKY_PLUGIN_API = 2", "J1MSKY_PLUGIN_API = 2 is not supported"),
    ("J1MSKY_PLUGIN_API = '1'", "literal integer"),
    ("J1MSKY_PLUGIN_API = True", "literal integer"),
    ("J1MSKY_PLUGIN_API = 0 + 1", "literal integer"),
    ("if True:\n    J1MSKY_PLUGIN_API = 1", "no top-level"),
])
def test_api_version_checked_before_any_code_runs(dropin, tmp_path, api, why):
    write(dropin, "ver.py", marker_source(tmp_path / "ran", api))
    e = entry(load(dropin), "ver")
    assert e["status"] == "refused" and why in e["reason"]
    assert not (tmp_path / "ran").exists()
    assert "j1msky_plugins.ver" not in sys.modules


def test_annotated_api_version_accepted(dropin):
    write(dropin, "ann.py", "J1MSKY_PLUGIN_API: int = 1\ndef register(registry):\n    pass\n")
    assert entry(load(dropin), "ann")["status"] == "loaded"


# -- failures are isolated -------------------------------------------------------


def test_syntax_error_fails(dropin):
    write(dropin, "broken.py", "J1MSKY_PLUGIN_API = 1\ndef register(:\n")
    e = entry(load(dropin), "broken")
    assert e["status"] == "failed" and e["reason"].startswith("SyntaxError:")


def test_exception_at_import_fails_and_is_logged(dropin, caplog):
    write(dropin, "boom.py", "J1MSKY_PLUGIN_API = 1\nraise RuntimeError('kaboom')\n")
    write(dropin, "echo.py", GOOD)
    with caplog.at_level(logging.ERROR, logger="j1mskyd.plugins"):
        registry = load(dropin)
    e = entry(registry, "boom")
    assert e["status"] == "failed" and e["reason"] == "RuntimeError: kaboom"
    assert "boom" in caplog.text and "kaboom" in caplog.text
    assert "j1msky_plugins.boom" not in sys.modules
    assert "echo" in registry.provider_kinds()  # the next plugin still loads


def test_system_exit_at_import_is_contained(dropin):
    write(dropin, "quitter.py", "J1MSKY_PLUGIN_API = 1\nraise SystemExit(3)\n")
    e = entry(load(dropin), "quitter")
    assert e["status"] == "failed" and e["reason"].startswith("SystemExit")


def test_exception_in_register_leaves_no_registration(dropin):
    write(dropin, "half.py", """
        J1MSKY_PLUGIN_API = 1
        def register(registry):
            registry.add_provider("half_a", lambda s, c: None)
            registry.add_sink("half_sink", lambda s, c: None)
            raise ValueError("second half broke")
    """)
    registry = load(dropin)
    e = entry(registry, "half")
    assert e["status"] == "failed" and e["reason"] == "ValueError: second half broke"
    assert e["provides"] == {"providers": [], "sinks": []}
    assert "half_a" not in registry.provider_kinds() and "half_sink" not in registry.sink_kinds()
    with pytest.raises(KeyError):
        registry.provider_factory("half_a")


def test_missing_register_fails(dropin):
    write(dropin, "noreg.py", "J1MSKY_PLUGIN_API = 1\n")
    e = entry(load(dropin), "noreg")
    assert e["status"] == "failed" and "no register(registry) function" in e["reason"]


def test_async_register_fails(dropin):
    write(dropin, "asyncreg.py", "J1MSKY_PLUGIN_API = 1\nasync def register(registry):\n    pass\n")
    e = entry(load(dropin), "asyncreg")
    assert e["status"] == "failed" and "not async" in e["reason"]


def test_hanging_register_times_out_and_late_registration_is_discarded(dropin, tmp_path):
    release, done = tmp_path / "release", tmp_path / "done"
    write(dropin, "hang.py", f"""
        import os, time
        J1MSKY_PLUGIN_API = 1
        def register(registry):
            while not os.path.exists({str(release)!r}):
                time.sleep(0.01)
            try:
                registry.add_provider("late", lambda s, c: None)
            finally:
                open({str(done)!r}, "w").close()
    """)
    write(dropin, "zz_after.py", GOOD.replace('"echo"', '"after"'))
    started = time.monotonic()
    registry = load(dropin, timeout=0.5)
    assert time.monotonic() - started < 5
    e = entry(registry, "hang")
    assert e["status"] == "failed" and e["reason"] == "timed out after 0.5s"
    assert "after" in registry.provider_kinds()  # loading carried on
    release.touch()
    deadline = time.monotonic() + 5
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done.exists()
    assert "late" not in registry.provider_kinds()


# -- names, kinds, config ----------------------------------------------------------


def test_duplicate_plugin_name_refused(dropin, tmp_path):
    write(dropin, "offline.py", marker_source(tmp_path / "ran"))
    registry = load(dropin)
    [dup] = [e for e in registry.report() if e["source"] == "dropin"]
    assert dup["status"] == "refused" and dup["reason"].startswith("duplicate plugin name")
    assert str(BUILTIN / "offline.py") in dup["reason"]
    assert not (tmp_path / "ran").exists()


def test_duplicate_kind_refused_even_if_swallowed(dropin):
    write(dropin, "clash.py", """
        J1MSKY_PLUGIN_API = 1
        def register(registry):
            registry.add_provider("mine", lambda s, c: None)
            try:
                registry.add_provider("offline", lambda s, c: None)
            except Exception:
                pass
    """)
    registry = load(dropin)
    e = entry(registry, "clash")
    assert e["status"] == "refused"
    assert e["reason"] == "provider kind 'offline' is already provided by plugin 'offline'"
    assert "mine" not in registry.provider_kinds()


def test_disabled_plugins_refused(dropin, tmp_path):
    write(dropin, "echo.py", marker_source(tmp_path / "ran"))
    registry = load(dropin, disabled=["echo", "anthropic"])
    for name in ("echo", "anthropic"):
        e = entry(registry, name)
        assert e["status"] == "refused" and e["reason"] == "disabled in config"
    assert registry.provider_kinds() == ["offline", "openai_compat"]
    assert not (tmp_path / "ran").exists()


def test_direct_registry_refuses_duplicates_and_bad_kinds():
    registry = PluginRegistry()
    registry.add_provider("x", lambda s, c: None)
    with pytest.raises(PluginError, match="already provided"):
        registry.add_provider("x", lambda s, c: None)
    with pytest.raises(PluginError, match="must match"):
        registry.add_sink("Bad Kind", lambda s, c: None)
    with pytest.raises(PluginError, match="not callable"):
        registry.add_sink("y", "nope")


# -- build_provider ------------------------------------------------------------------


def test_build_provider_errors_name_the_provider():
    registry = load(None)
    with pytest.raises(PluginError, match=r"provider 'p': no loaded plugin provides kind 'nope' \(loaded: anthropic"):
        build_provider(registry, ProviderSettings(name="p", plugin="nope"), None)
    with pytest.raises(PluginError, match="openai_compat needs base_url"):
        build_provider(registry, ProviderSettings(name="p", plugin="openai_compat"), None)


def test_build_provider_redacts_key_and_checks_contract():
    registry = PluginRegistry()

    def leaky(settings, session):
        raise RuntimeError(f"bad key {settings.api_key}")

    registry.add_provider("leaky", leaky)
    registry.add_provider("empty", lambda settings, session: object())
    with pytest.raises(PluginError) as info:
        build_provider(registry, ProviderSettings(name="p", plugin="leaky", api_key="sk-TOPSECRET"), None)
    assert "sk-TOPSECRET" not in str(info.value) and "RuntimeError: bad key [redacted]" in str(info.value)
    with pytest.raises(PluginError, match="without complete"):
        build_provider(registry, ProviderSettings(name="p", plugin="empty"), None)
