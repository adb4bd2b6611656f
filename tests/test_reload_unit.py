"""The parts of a reload on their own: what differs between two configurations, which settings
keep their running value until a restart, the refusal's shape, and a provider slot that is
resized or retired while calls hold it (j1mskyd/reload.py, provider_pool.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types

from j1mskyd.breaker import CircuitBreaker
from j1mskyd.config import ConfigIssue, embedded_default
from j1mskyd.logsetup import Masker
from j1mskyd.plugin_api import ProviderSettings
from j1mskyd.provider_pool import ProviderSlot
from j1mskyd.reload import ConfigInvalid, apply_restart_only, diff


def _with(config, section, **values):
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


def test_the_same_configuration_differs_in_nothing():
    assert diff(embedded_default(), embedded_default()) == {}


def test_models_added_removed_and_changed_with_old_and_new_values():
    old = embedded_default()
    models = dict(old.models)
    del models["codex"]
    models["opus"] = dataclasses.replace(models["opus"], output_per_1k=0.08, fallback=None)
    models["new"] = dataclasses.replace(models["k2p5"], alias="new")
    new = dataclasses.replace(old, models=types.MappingProxyType(models))
    assert diff(old, new) == {"models": {
        "added": ["new"], "removed": ["codex"],
        "changed": {"opus": [{"key": "output_per_1k", "old": 0.075, "new": 0.08},
                             {"key": "fallback", "old": "sonnet", "new": None}]}}}


def test_a_providers_key_and_options_are_said_to_change_never_shown():
    old = embedded_default()
    offline = old.providers["offline"]
    changed = dataclasses.replace(offline, api_key="sk-very-secret-value", options={"token": "also-secret"},
                                  hourly_limit=5)
    new = dataclasses.replace(old, providers=types.MappingProxyType({"offline": changed}))
    changes = diff(old, new)
    assert changes == {"providers": {"changed": {"offline": [
        {"key": "api_key", "changed": True}, {"key": "hourly_limit", "old": 10000, "new": 5},
        {"key": "options", "changed": True}]}}}
    assert "secret" not in json.dumps(changes)


def test_settings_are_named_as_in_the_file_nested_pricing_included():
    old = embedded_default()
    new = _with(_with(old, "limits", spawn=7), "budget", daily_budget=5.0)
    new = _with(new, "pricing", policy=dataclasses.replace(old.pricing.policy, min_markup=1.5))
    assert diff(old, new)["settings"] == [
        {"key": "budget.daily_budget", "old": 50.0, "new": 5.0},
        {"key": "limits.spawn", "old": 100, "new": 7},
        {"key": "pricing.min_markup", "old": old.pricing.policy.min_markup, "new": 1.5}]


def test_restart_only_settings_keep_their_running_value_and_are_listed():
    running = embedded_default()
    loaded = _with(_with(running, "server", port=9090, secrets_file="/elsewhere"), "runtime",
                   max_concurrency=8, max_attempts=9)
    loaded = _with(loaded, "security", auth=False, require_signatures=True)
    effective, needs = apply_restart_only(running, loaded)
    assert [(n["key"], n["running"], n["in_file"]) for n in needs] == [
        ("server.port", 8080, 9090), ("runtime.max_concurrency", 64, 8), ("security.auth", True, False)]
    assert all(n["why"] for n in needs)
    assert effective.server.port == 8080 and effective.runtime.max_concurrency == 64 and effective.security.auth
    # The rest of the file applies.
    assert effective.server.secrets_file == "/elsewhere" and effective.runtime.max_attempts == 9
    assert effective.security.require_signatures is True
    assert apply_restart_only(running, running) == (running, [])


def test_the_refusal_lists_every_problem_in_the_error_envelopes_details():
    issues = [ConfigIssue("/etc/j1msky/config.toml", "models.a.provider", "no provider named 'x'"),
              ConfigIssue("/etc/j1msky/config.toml", "", "invalid TOML: line 3")]
    error = ConfigInvalid(issues)
    assert error.status == 422 and error.type == "INVALID_CONFIG"
    assert "2 problem(s)" in error.message and "running configuration stays" in error.message
    assert error.extra["details"] == [
        {"field": "models.a.provider", "message": "no provider named 'x'", "file": "/etc/j1msky/config.toml"},
        {"field": "", "message": "invalid TOML: line 3", "file": "/etc/j1msky/config.toml"}]


class _Client:
    def __init__(self) -> None:
        self.closed = 0

    async def complete(self, request):  # pragma: no cover - never called here
        raise AssertionError

    async def close(self) -> None:
        self.closed += 1


def _slot(limit: int = 1) -> tuple[ProviderSlot, _Client]:
    client = _Client()
    return ProviderSlot(ProviderSettings(name="p", plugin="x", max_concurrency=limit), client,
                        CircuitBreaker()), client


async def test_a_retired_slot_closes_its_client_only_after_its_last_call():
    slot, client = _slot(limit=2)
    await slot.acquire()
    await slot.acquire()
    retiring = asyncio.ensure_future(slot.retire(5.0))
    await asyncio.sleep(0)
    slot.release()
    await asyncio.sleep(0)
    assert not retiring.done() and client.closed == 0  # one call still holds it
    slot.release()
    await asyncio.wait_for(retiring, 5.0)
    assert client.closed == 1


async def test_an_idle_retired_slot_closes_at_once():
    slot, client = _slot()
    await asyncio.wait_for(slot.retire(5.0), 5.0)
    assert client.closed == 1


async def test_a_larger_limit_lets_those_who_wait_in_at_once():
    slot, _ = _slot(limit=1)
    await slot.acquire()
    waiting = [asyncio.ensure_future(slot.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)
    slot.resize(dataclasses.replace(slot.settings, max_concurrency=3))
    await asyncio.wait_for(asyncio.gather(*waiting), 5.0)
    assert slot.active == 3 and slot.limit == 3 and slot.settings.max_concurrency == 3


def test_the_log_masks_the_keys_a_reload_brings():
    mask = Masker(["sk-old-key-123456"])
    mask.remember(["sk-new-key-654321", None])
    assert mask("old sk-old-key-123456 new sk-new-key-654321") == "old [redacted] new [redacted]"


def test_a_section_added_to_config_later_is_diffed_without_a_change_here():
    """Issue 17's [roles.*] and [tasks] (added after reload.py) show in the answer as they come."""
    base = embedded_default()
    roles = dict(base.roles)
    coder = roles.pop("critic")
    old = dataclasses.replace(base, roles={**roles, "coder": dataclasses.replace(coder, max_tokens=100),
                                          "critic": coder},
                              tasks=dataclasses.replace(base.tasks, max_steps=10))
    new = dataclasses.replace(base, roles={**roles, "coder": dataclasses.replace(coder, max_tokens=200)},
                              tasks=dataclasses.replace(base.tasks, max_steps=20))
    assert diff(old, new) == {
        "roles": {"removed": ["critic"], "changed": {"coder": [{"key": "max_tokens", "old": 100, "new": 200}]}},
        "settings": [{"key": "tasks.max_steps", "old": 10, "new": 20}]}
