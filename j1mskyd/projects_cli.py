"""``j1mskyd projects list | create | delete``: projects on the state dir's database, from the
host, without an admin key.  Safe beside a running daemon, which picks the change up within
keys.REFRESH_SECONDS (ProjectService.refresh; the members through the keys' own refresh).

The same rules as the API (project_request.py, projects.py): a bad value exits 2 with the
field and the message, a name taken exits 2, an unknown project id exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .plain_text import shown

__all__ = ["add_commands"]


def add_commands(sub: Any, load: Callable[[argparse.Namespace], Any]) -> None:
    """The ``projects`` command on ``build_parser``'s subparsers; ``load(args)``: the config."""
    projects = sub.add_parser("projects", help="list, create and delete projects (budget scopes above keys)")
    commands = projects.add_subparsers(dest="projects_command", required=True)

    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, help_text in (("list", "list projects with their members"),
                            ("create", "make a project; its members leave any other project"),
                            ("delete", "delete a project; its keys leave it, its spend stays in the ledger")):
        p = parsers[name] = commands.add_parser(name, help=help_text)
        p.add_argument("--config", help="config file (for the state dir; default as for serve)")
        p.add_argument("--state-dir", help="the daemon's state directory")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_projects, load=load)
    create = parsers["create"]
    create.add_argument("name")
    create.add_argument("--max-budget", metavar="USD", help="the project's budget per period (a hard cap)")
    create.add_argument("--budget-duration", metavar="PERIOD", help="1d (the default), 30d or total")
    create.add_argument("--member", action="append", metavar="KEY_ID", help="a key of the project; repeatable")
    parsers["delete"].add_argument("project_id")


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """``create``'s options as the API's body: a number that is not one is passed on as text,
    for the API's own message."""
    body: dict[str, Any] = {"name": args.name, "members": args.member or []}
    if args.max_budget is not None:
        try:
            body["max_budget"] = float(args.max_budget)
        except ValueError:
            body["max_budget"] = args.max_budget
    if args.budget_duration is not None:
        body["budget_duration"] = args.budget_duration
    return body


def cmd_projects(args: argparse.Namespace) -> int:
    from .cli_state import on_state
    from .errors import Conflict, NotFound
    from .keys import KeyService
    from .project_request import parse_new
    from .projects import ProjectService
    from .store import Store
    config = args.load(args)

    async def run(store: Store) -> int:
        keys = KeyService(store)
        service = ProjectService(store, keys)
        await keys.reload()
        await service.load()
        try:
            if args.projects_command == "create":
                project, moves = await service.create(parse_new(_body(args)))
                answer: Any = {**service.view(project), "moved": [m.public() for m in moves]}
            elif args.projects_command == "delete":
                project, released = await service.delete(args.project_id)
                answer = {"project_id": project.project_id, "released_keys": released}
            else:
                listed = [service.view(p) for p in sorted(service.projects.values(), key=lambda p: p.name)]
                print(json.dumps(listed, indent=2) if args.json else "\n".join(map(_line, listed)))
                return 0
        except (NotFound, Conflict) as exc:  # an unknown id: 1; a name taken: 2
            print(f"j1mskyd: {exc.message}", file=sys.stderr)
            return 1 if isinstance(exc, NotFound) else 2
        print(json.dumps(answer, indent=2) if args.json
              else f"{args.projects_command}d {project.project_id} ({shown(project.name)})")
        return 0

    return on_state(config, args.state_dir or config.server.state_dir, run, reading=args.projects_command == "list")


def _line(p: dict[str, Any]) -> str:
    budget = "no budget" if p["max_budget"] is None else f"budget {p['max_budget']:g}/{p['budget_duration']}"
    return f"{p['project_id']}  {shown(p['name']):<20} {budget}  keys: {', '.join(p['members']) or '-'}"
