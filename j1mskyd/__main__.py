"""Command line: ``j1mskyd serve | check-config | version``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sqlite3
import sys
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:  # imported when a command needs it (start-up time)
    from .config import Config


def _load(args: argparse.Namespace) -> Config:
    from .config import ConfigError, load_config
    try:
        return load_config(args.config)
    except ConfigError as exc:
        # One "file: key: reason" line per problem ("file: reason" for whole-file ones).
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def _with_overrides(config: Config, args: argparse.Namespace) -> Config:
    """``serve``'s --host, --port and --state-dir over the file's values."""
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("state_dir", args.state_dir))
                 if v is not None}
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    # A reload asked for before the daemon is ready has nothing to do (the start reads the file
    # anyway); until listener.serve handles SIGHUP, its default action would end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = _with_overrides(_load(args), args)
    from .config import EMBEDDED, load_config, missing_key_warnings
    from .logsetup import Masker, configure
    # Secrets are masked in every shape of the log; personal data as the config says.
    handler = configure(config.server.log_level, config.server.log_format, pii=config.privacy.mask_pii_in_logs,
                        secrets=[p.api_key for p in config.providers.values()])
    mask = getattr(handler.formatter, "mask", None)

    def reload_from() -> Config:
        """A reload (SIGHUP, POST /admin/reload) reads the file the start read, the same way
        (the command line's overrides again); the API keys it finds are masked from then on."""
        fresh = _with_overrides(load_config(config.source), args)
        if isinstance(mask, Masker):
            mask.remember(p.api_key for p in fresh.providers.values())
        return fresh
    for line in missing_key_warnings(config):
        logging.getLogger("j1mskyd").warning("%s", line)
    try:
        import uvloop  # optional: python3-uvloop on Debian, the [speed] extra on PyPI
        uvloop.install()  # uvloop 0.17 (bookworm) has install() but no run()
    except ImportError:
        pass
    from .app import build_app, state_db_path
    from .listener import serve
    from .store import StoreError, database_problem
    # Port taken, state dir unwritable, loose or in use, database damaged, wrong data.key.
    # A dashboard file missing from the package (build_app).
    refusals = (OSError, StoreError, sqlite3.DatabaseError)
    log = logging.getLogger("j1mskyd")

    def listening(_banner: str) -> None:  # serve calls this once the socket is bound
        log.info("j1mskyd %s listening on http://%s:%d (config: %s)", __version__,
                 config.server.host, config.server.port, config.source)

    # serve (listener.py) turns SIGTERM/SIGINT into a graceful exit: the site stops accepting,
    # then the cleanup context persists in-flight agents and closes the database.
    try:
        app = build_app(config, reload_from=None if config.source == EMBEDDED else reload_from)
        serve(app, config.server, print=listening)
    except refusals as exc:  # one line that says what and what to do, no traceback
        logging.getLogger("j1mskyd").debug("start failed", exc_info=True)
        # A DatabaseError: damage found past the header, loading the state.
        problem = database_problem(state_db_path(config), exc) if isinstance(exc, sqlite3.DatabaseError) else exc
        print(f"j1mskyd: cannot start: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Key management on the state dir's database; safe beside a running daemon, which
    picks the change up within a few seconds (keys.REFRESH_SECONDS)."""
    import json
    import time

    from .cli_state import on_state
    from .errors import Conflict
    from .key_request import model_names, parse_limits
    from .keys import REFRESH_SECONDS, KeyRefused, KeyService, LastAdminKey
    from .plain_text import shown
    from .store import Store
    config = _load(args)
    # A running daemon reads the keys from the shared database every REFRESH_SECONDS: say
    # when a change made here takes effect there (a new key was refused for up to that long).
    takes_effect = (f"j1mskyd: a daemon running on this state dir applies this within {REFRESH_SECONDS:g} s "
                    "(open event streams of a revoked key close within 1 s)")

    async def run(store: Store) -> int:
        try:
            keys = KeyService(store, config.security.key_rotation_grace_hours * 3600)
            await keys.reload()
            if args.keys_command == "list":
                listed = [k.public(time.time()) for k in keys.ring.keys.values()]
                if args.json:
                    print(json.dumps(listed, indent=2))
                for k in [] if args.json else listed:
                    print(f"{k['key_id']}  {k['status']:<8} {shown(k['name']):<20} {','.join(k['scopes'])}"
                          f"  last used {k['last_used_at'] or 'never'}")
                return 0
            if args.keys_command == "revoke":
                key = await keys.revoke(args.key_id, args.reason, force=args.force)
                print(f"revoked {key.key_id} ({shown(key.name)})")
                print(takes_effect, file=sys.stderr)
                return 0
            if args.keys_command == "update":
                key = keys.get(args.key_id)
                fields = _limit_fields(args)
                if not fields:
                    raise KeyRefused("nothing to change: give a limit option or --clear FIELD")
                limits = parse_limits(fields, known_models=model_names(config), now=time.time(),
                                      current=(key.max_budget, key.budget_duration))
                key, columns = await keys.update(args.key_id, limits, force=True)  # the host may
                public = key.public(time.time())
                if args.json:
                    print(json.dumps(public, indent=2))
                else:
                    print(f"updated {key.key_id} ({shown(key.name)}): "
                          f"{', '.join(sorted(c for c in columns if c != 'budget_anchor')) or 'nothing changed'}")
                print(takes_effect, file=sys.stderr)
                return 0
            if args.keys_command == "create":
                limits = parse_limits(_limit_fields(args), known_models=model_names(config), now=time.time())
                new = await keys.create(args.name, args.scopes.split(","), args.require_signature, limits=limits)
            else:
                new = await keys.rotate(args.key_id)
            if args.json:
                print(json.dumps(new.reveal(), indent=2))
            else:
                hook = f"webhook secret:  {new.webhook_secret}\n" if new.webhook_secret else ""
                print(f"key id:  {new.key.key_id}\ntoken:   {new.token}\nsecret:  {new.secret}\n{hook}"
                      f"scopes:  {','.join(new.key.scopes)}\n"
                      "The token and secrets are shown only now; store them safely.")
            print(takes_effect, file=sys.stderr)
            return 0
        except LookupError as exc:
            print(f"j1mskyd: no such key: {exc}", file=sys.stderr)
            return 1
        except (KeyRefused, Conflict) as exc:  # Conflict: the last admin key, a key already rotated
            hint = " (or pass --force)" if isinstance(exc, LastAdminKey) else ""
            print(f"j1mskyd: {exc}{hint}", file=sys.stderr)
            return 2

    # A limit option's bad value (ValidationFailed): every problem, one line each (on_state).
    return on_state(config, args.state_dir or config.server.state_dir, run, reading=args.keys_command == "list")


def _number(text: str, kind: type) -> object:
    """A number option's value; text that is not one is passed on as it is, for the same
    message the API gives (key_request.parse_limits)."""
    try:
        return kind(text)
    except ValueError:
        return text


def _pairs(items: list[str] | None, option: str, kind: type | None = None) -> dict[str, object] | None:
    """Repeated ``NAME=VALUE`` options as an object (None: the option was not given)."""
    if not items:
        return None
    out: dict[str, object] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            from .keys import KeyRefused
            raise KeyRefused(f"{option} takes NAME=VALUE, not {item!r}")
        out[name] = _number(value, kind) if kind is not None else value
    return out


def _limit_fields(args: argparse.Namespace) -> dict[str, object]:
    """The limit options of ``keys create|update`` as the API's fields (--clear FIELD: null)."""
    from .key_request import LIMIT_FIELDS
    from .keys import KeyRefused
    given: dict[str, object | None] = {
        "max_budget": None if args.max_budget is None else _number(args.max_budget, float),
        "budget_duration": args.budget_duration,
        "models": None if args.models is None else [m.strip() for m in args.models.split(",")],
        "max_concurrency": None if args.max_concurrency is None else _number(args.max_concurrency, int),
        "limits": _pairs(args.limit, "--limit", int),
        "expires_at": args.expires_at,
        "metadata": _pairs(args.metadata, "--metadata"),
    }
    fields = {k: v for k, v in given.items() if v is not None}
    for name in getattr(args, "clear", None) or ():
        if name not in LIMIT_FIELDS:
            raise KeyRefused(f"--clear takes one of {', '.join(LIMIT_FIELDS)}, not {name!r}")
        if name in fields:
            raise KeyRefused(f"--clear {name} and a value for {name} at once")
        fields[name] = None
    return fields


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import missing_key_warnings
    config = _load(args)
    for line in missing_key_warnings(config):  # valid, but these providers will fail: exit 0
        print(f"{config.source}: warning: {line}", file=sys.stderr)
    print(f"{config.source}: OK ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.teams)} teams)")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"j1mskyd {__version__}")
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def _limit_options(p: argparse.ArgumentParser) -> None:
    """A key's own limits, as in POST /keys and PATCH /keys/{key_id}."""
    p.add_argument("--max-budget", metavar="USD", help="the key's own budget per period (a hard cap)")
    p.add_argument("--budget-duration", metavar="PERIOD", help="1d (the default), 30d or total")
    p.add_argument("--models", metavar="A,B", help="the model aliases and team ids the key may use")
    p.add_argument("--max-concurrency", metavar="N", help="live agents at once (instead of max_agents_per_key)")
    p.add_argument("--limit", action="append", metavar="CLASS=N",
                   help="requests per window for an endpoint class, instead of [limits]; repeatable")
    p.add_argument("--expires-at", metavar="TIME", help="ISO-8601, e.g. 2030-01-31T12:00:00Z: refused after it")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                   help="a free-form label; repeatable (on update: replaces all the labels)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="j1mskyd", description="A small, trustworthy agency of LLM agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="config file (default: $J1MSKY_CONFIG or the embedded default)")
    serve.add_argument("--host", help="address to bind (overrides the config)")
    serve.add_argument("--port", type=_port, help="port to bind (default 8080)")
    serve.add_argument("--state-dir", help="directory for the database and keys")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("--config", help="config file (default: $J1MSKY_CONFIG or the embedded default)")
    check.set_defaults(func=cmd_check_config)
    keys = sub.add_parser("keys", help="create, list, revoke and rotate API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    def keys_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = keys_sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="config file (for the state dir; default as for serve)")
        p.add_argument("--state-dir", help="the daemon's state directory")
        p.set_defaults(func=cmd_keys)
        return p

    create = keys_parser("create", "make a key; prints its token and signing secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: agents:read,agents:write,billing:read,"
                                                        "admin:write")
    create.add_argument("--require-signature", action="store_true", help="refuse this key's unsigned requests")
    create.add_argument("--json", action="store_true")
    _limit_options(create)
    update = keys_parser("update", "change a key's own limits (docs/security.md, Key limits)")
    update.add_argument("key_id")
    _limit_options(update)
    update.add_argument("--clear", action="append", metavar="FIELD",
                        help="remove a limit (max_budget, models, max_concurrency, limits, expires_at, metadata; "
                             "budget_duration: back to 1d); repeatable")
    update.add_argument("--json", action="store_true")
    listing = keys_parser("list", "list keys (never their tokens)")
    listing.add_argument("--json", action="store_true")
    revoke = keys_parser("revoke", "revoke a key now")
    revoke.add_argument("key_id")
    revoke.add_argument("--reason", default="revoked")
    revoke.add_argument("--force", action="store_true", help="also revoke the last active admin key")
    rotate = keys_parser("rotate", "make a successor key; the old one works for the grace period")
    rotate.add_argument("key_id")
    rotate.add_argument("--json", action="store_true")

    from .cli_client import add_commands
    add_commands(sub)  # spawn, agents, agent, cancel, status: a client of a running daemon
    from .projects_cli import add_commands as add_project_commands
    add_project_commands(sub, _load)  # projects list|create|delete, on the state dir

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def _options_after_command(argv: list[str], commands: set[str]) -> list[str]:
    """``j1mskyd --json agents`` as ``j1mskyd agents --json``: options given before the command
    move behind it (each command declares the options it takes; argparse reads a subcommand's
    options only after its name).  ``-h``/``--help`` alone stay where they are."""
    for i, token in enumerate(argv):
        if token in commands:
            return argv[i:] + argv[:i]
        if token in ("-h", "--help"):
            break
    return argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed.  The parser is left behind with this function's frame: kept in
    ``main``'s, every command's parser stayed alive for as long as ``serve`` ran (~0.12 MB)."""
    parser = build_parser()
    # The subcommands' names (argparse keeps them on its subparsers action, which has no public getter).
    commands = {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices}
    return parser.parse_args(_options_after_command(sys.argv[1:] if argv is None else list(argv), commands))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
