"""[tasks], [roles.<name>] and [workflows.<type>]: the shipped defaults, derived roles for a
config that names none, and every problem reported with its file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from j1mskyd.config import ConfigError, embedded_default, load_config, validate_role
from j1mskyd.task_config import SHIPPED_WORKFLOWS

SHIPPED = Path(__file__).resolve().parent.parent / "etc" / "j1msky" / "config.toml"
MINIMAL = """
[providers.p]
plugin = "offline"

[models.cheap]
provider = "p"
upstream = "c"
input_per_1k = 0.001
output_per_1k = 0.001
blended_per_1k = 0.001

[models.dear]
provider = "p"
upstream = "d"
input_per_1k = 0.01
output_per_1k = 0.03
blended_per_1k = 0.01
"""


@pytest.fixture
def load(tmp_path):
    env = {"J1MSKY_SECRETS_FILE": str(tmp_path / "absent.env"), "XDG_STATE_HOME": str(tmp_path / "state")}

    def load(text: str):
        path = tmp_path / "config.toml"
        path.write_text(text)
        return load_config(str(path), env)
    return load


def issues(load, text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return {i.key: i.reason for i in info.value.issues}


@pytest.mark.parametrize("cfg", [embedded_default(), None])
def test_the_embedded_default_and_the_shipped_file_define_the_four_roles_and_workflows(cfg, tmp_path):
    if cfg is None:
        cfg = load_config(SHIPPED, {"J1MSKY_SECRETS_FILE": str(tmp_path / "absent.env")})
    assert dict(cfg.workflows) == dict(SHIPPED_WORKFLOWS)
    assert list(cfg.roles) == ["architect", "implementer", "critic", "integrator"]
    assert (cfg.tasks.max_revisions, cfg.tasks.approval_threshold, cfg.tasks.max_steps) == (2, 0.05, 20)
    implementer = cfg.roles["implementer"]
    assert implementer.default_model == "k2p5" and implementer.models == ("k2p5", "sonnet", "opus")
    assert cfg.roles["critic"].review is True and cfg.roles["implementer"].review is False
    assert implementer.constraints["max_files_per_task"] == 10


def test_a_file_without_roles_gets_the_shipped_roles_over_every_model_cheapest_first(load):
    cfg = load(MINIMAL)
    assert list(cfg.roles) == ["architect", "implementer", "critic", "integrator"]
    assert all(r.models == ("cheap", "dear") and r.default_model == "cheap" for r in cfg.roles.values())
    assert dict(cfg.workflows) == dict(SHIPPED_WORKFLOWS)


def test_roles_and_workflows_of_ones_own(load):
    cfg = load(MINIMAL + """
[tasks]
max_revisions = 1
approval_threshold = 0.5

[roles.coder]
default_model = "cheap"
models = ["cheap", "dear"]
[roles.coder.escalation]
cost_threshold = 0.1

[roles.reviewer]
default_model = "dear"
review = true

[workflows.fix]
steps = ["coder", "reviewer"]
""")
    assert dict(cfg.workflows) == {"fix": ("coder", "reviewer")}
    assert cfg.roles["reviewer"].models == ("dear",) and cfg.roles["reviewer"].review
    assert cfg.roles["coder"].escalation.cost_threshold == 0.1 and cfg.tasks.max_revisions == 1


@pytest.mark.parametrize("text, key, reason", [
    ("[tasks]\nmax_revisions = -1\n", "tasks.max_revisions", "between 0 and 100"),
    ("[tasks]\nnope = 1\n", "tasks.nope", "unknown key"),
    ("[roles.r]\nmodels = [\"cheap\"]\n", "roles.r.default_model", "required"),
    ("[roles.r]\ndefault_model = \"gpt\"\n", "roles.r.default_model", "no model named 'gpt'"),
    ("[roles.r]\ndefault_model = \"dear\"\nmodels = [\"cheap\"]\n", "roles.r.default_model", "must be one of"),
    ("[roles.r]\ndefault_model = \"cheap\"\nmodels = [\"cheap\", \"cheap\"]\n", "roles.r.models", "must not repeat"),
    ("[roles.r]\ndefault_model = \"cheap\"\ntemperature = 5\n", "roles.r.temperature", "between 0 and 2"),
    ("[roles.r]\ndefault_model = \"cheap\"\n[roles.r.escalation]\ncost = 1\n", "roles.r.escalation.cost",
     "unknown key"),
    ("[roles.R]\ndefault_model = \"cheap\"\n", "roles.R", "name must be"),
    ("[roles.r]\ndefault_model = \"cheap\"\n[workflows.w]\nsteps = [\"r\", \"ghost\"]\n", "workflows.w.steps",
     "no role named 'ghost'"),
    ("[roles.r]\ndefault_model = \"cheap\"\n[workflows.w]\nsteps = []\n", "workflows.w.steps", "must not be empty"),
    ("[roles.r]\ndefault_model = \"cheap\"\n", "workflows", "the shipped workflows need the roles"),
    ("roles = 1\n", "roles", "must be a table"),
    ("workflows = []\n", "workflows", "must be a table"),
])
def test_problems_name_their_key(load, text, key, reason):
    found = issues(load, text + MINIMAL if text.startswith(("roles =", "workflows =")) else MINIMAL + text)
    assert key in found and reason in found[key], found


def test_a_role_changed_at_run_time_is_checked_by_the_same_validator():
    cfg = embedded_default()
    role = validate_role("critic", {"default_model": "opus", "models": ["sonnet", "opus"]}, cfg.models)
    assert role.default_model == "opus" and role.review is True
    with pytest.raises(ConfigError) as info:
        validate_role("critic", {"default_model": "opus", "temperature": "hot"}, cfg.models)
    assert [(i.key, i.reason) for i in info.value.issues] == [
        ("roles.critic.temperature", "must be a number, not string")]
