"""``j1mskyd projects list|create|delete`` on the state dir of a running ``j1mskyd serve`` (real
processes): the daemon notices a project made or deleted from the command line, and its
members, within keys.REFRESH_SECONDS plus a margin; bad input exits 2 naming the field and
writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from j1mskyd.keys import REFRESH_SECONDS
from tests.daemon import run_cli, wait_until
from tests.test_keys_cli import MARGIN, daemon, http, keys_cli, keys_json  # noqa: F401 (daemon: a fixture)


def projects_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    out = run_cli("projects", *args, "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    return out.returncode, out.stdout, out.stderr


def projects_json(tmp_path: Path, *args: str) -> dict | list:
    code, out, err = projects_cli(tmp_path, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_a_project_made_and_deleted_on_the_command_line_reaches_the_running_daemon(tmp_path, daemon):
    admin = json.loads((tmp_path / "state" / "bootstrap-admin.key").read_text())["token"]
    member = keys_json(tmp_path, "create", "--name", "member", "--scopes", "agents:read")
    made = projects_json(tmp_path, "create", "household", "--max-budget", "5", "--budget-duration", "30d",
                         "--member", member["key_id"])
    assert made["name"] == "household" and made["members"] == [member["key_id"]] and made["moved"] == []
    pid = made["project_id"]
    seen = wait_until(lambda: (lambda r: r[1] if r[0] == 200 else None)(http(daemon, "GET", f"/api/projects/{pid}",
                                                                                admin)),
                      timeout=REFRESH_SECONDS + MARGIN, what="the daemon to see the CLI's project")
    assert seen["max_budget"] == 5 and seen["budget_duration"] == "30d" and seen["budget"]["spend"] == 0
    # The member key reads its own project: the daemon's key ring has its membership too.
    wait_until(lambda: http(daemon, "GET", f"/api/projects/{pid}", member["token"])[0] == 200,
               timeout=REFRESH_SECONDS + MARGIN, what="the member key to read its project")
    listed = projects_json(tmp_path, "list")
    assert [p["project_id"] for p in listed] == [pid]
    code, text, err = projects_cli(tmp_path, "list")
    assert code == 0 and pid in text and "household" in text and member["key_id"] in text, err
    code, out, err = projects_cli(tmp_path, "delete", pid)
    assert code == 0 and pid in out, err
    wait_until(lambda: http(daemon, "GET", f"/api/projects/{pid}", admin)[0] == 404,
               timeout=REFRESH_SECONDS + MARGIN, what="the daemon to forget the deleted project")
    status, key = http(daemon, "GET", f"/api/keys/{member['key_id']}", admin)
    assert status == 200 and key["project_id"] is None


@pytest.mark.parametrize("args,message", [
    (("create", "p", "--max-budget", "lots"), "max_budget:"),
    (("create", "p", "--max-budget", "-1"), "max_budget:"),
    (("create", "p", "--budget-duration", "7d", "--max-budget", "1"), "budget_duration:"),
    (("create", "p", "--budget-duration", "1d"), "budget_duration:"),
    (("create", "  "), "name:"),
    (("create", "p", "--member", "key_0000000000000000"), "members: unknown API key(s): key_0000000000000000"),
])
def test_cli_bad_values_exit_2_naming_the_field_and_write_nothing(tmp_path, args, message):
    code, out, err = projects_cli(tmp_path, *args)
    assert code == 2 and message in err and out == "" and "Traceback" not in err, err
    assert projects_json(tmp_path, "list") == []


def test_cli_a_taken_name_exits_2_and_an_unknown_id_1(tmp_path):
    projects_json(tmp_path, "create", "alpha")
    code, _, err = projects_cli(tmp_path, "create", "alpha")
    assert code == 2 and "already exists" in err, err
    code, _, err = projects_cli(tmp_path, "delete", "prj_0000000000000000")
    assert code == 1 and "not found" in err and "Traceback" not in err, err
    assert [p["name"] for p in projects_json(tmp_path, "list")] == ["alpha"]
    assert keys_cli(tmp_path, "list")[0] == 0  # the keys' command still works on the shared state helper
