"""The [pricing] table: the business rules' policy as defaults, partial overrides, every problem at once."""

from __future__ import annotations

import pytest

from j1mskyd import pricing
from j1mskyd.config import _EMBEDDED_TOML, ConfigError, _parse


def parse(table: str):
    return _parse(_EMBEDDED_TOML + "\n[pricing]\n" + table, "test.toml", {})


def test_without_a_table_the_policy_is_the_business_rules():
    cfg = parse("")
    assert cfg.pricing.policy == pricing.DEFAULT_POLICY and cfg.pricing.history_days == 365.0


def test_a_partial_table_keeps_the_other_defaults():
    cfg = parse('complexity_markup = {high = 5.5}\nsegment_adjustments = {startup = -0.75}\n'
                'minimum_price = 1\nmargin_thresholds = {task = 60}\ndefault_segment = "smb"\nhistory_days = 30\n')
    policy = cfg.pricing.policy
    assert dict(policy.complexity_markup) == {"low": 3.0, "medium": 4.0, "high": 5.5}
    assert dict(policy.segment_adjustments) == {"enterprise": 0.5, "mid_market": 0.0, "smb": -0.5, "startup": -0.75}
    assert dict(policy.margin_thresholds) == {"task": 60.0, "subscription": 50.0, "enterprise": 45.0}
    assert policy.minimum_price == 1.0 and policy.default_segment == "smb" and cfg.pricing.history_days == 30.0
    # and the rules use it
    q = pricing.quote("k2p5", cfg.models["k2p5"], "medium", "mid_market", 1200, 600, policy)
    assert q["recommended_price"] == 1.0


@pytest.mark.parametrize("table, key, reason", [
    ("complexity_markup = {huge = 5}", "pricing.complexity_markup", "unknown key 'huge'"),
    ("complexity_markup = {low = 0}", "pricing.complexity_markup", "low must be > 0"),
    ("complexity_markup = 4", "pricing.complexity_markup", "must be a table"),
    ("margin_thresholds = {task = 120}", "pricing.margin_thresholds", "task must be between 0 and 100"),
    ("default_delivery_type = \"retail\"", "pricing.default_delivery_type", "must be one of"),
    ("minimum_price = -1", "pricing.minimum_price", "must be >= 0"),
    ("executive_review_ratio = 2", "pricing.executive_review_ratio", "between 0 and 1"),
    ("history_days = 0", "pricing.history_days", "must be > 0"),
    ("min_markup = 6", "pricing.target_markup", "min_markup <= target_markup <= max_markup"),
    ("healthy_margin_pct = 90", "pricing.healthy_margin_pct", "must not exceed pricing.strong_margin_pct"),
    ("health_warning_pct = 120", "pricing.health_warning_pct", "must not exceed pricing.health_critical_pct"),
    ("hisory_days = 3", "pricing.hisory_days", "did you mean 'history_days'"),
])
def test_bad_values_are_named(table, key, reason):
    with pytest.raises(ConfigError) as e:
        parse(table)
    [issue] = e.value.issues
    assert issue.key == key and reason in issue.reason, e.value


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        parse('minimum_price = "a"\ndefault_segment = "x"\nstrong_margin_pct = 101\n')
    assert {i.key for i in e.value.issues} == {"pricing.minimum_price", "pricing.default_segment",
                                                "pricing.strong_margin_pct"}


def test_the_shipped_config_states_the_defaults():
    from pathlib import Path

    from j1mskyd.config import load_config
    import dataclasses
    import tomllib
    path = Path(__file__).parent.parent / "etc" / "j1msky" / "config.toml"
    shipped = load_config(path, env={})
    assert shipped.pricing.policy == pricing.DEFAULT_POLICY and shipped.pricing.history_days == 365.0
    stated = tomllib.loads(path.read_text())["pricing"]  # written out, not just defaulted
    assert set(stated) == {f.name for f in dataclasses.fields(pricing.PricingPolicy)} | {"history_days"}
