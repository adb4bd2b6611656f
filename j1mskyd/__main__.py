"""Command line: ``j1mskyd serve | check-config | version``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from . import __version__


def _load(args: argparse.Namespace):
    from .config import ConfigError, load_config
    try:
        return load_config(args.config)
    except ConfigError as exc:
        # One "file: key: reason" line per problem ("file: reason" for whole-file ones).
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("state_dir", args.state_dir))
                 if v is not None}
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional: python3-uvloop on Debian, the [speed] extra on PyPI
        uvloop.install()  # uvloop 0.17 (bookworm) has install() but no run()
    except ImportError:
        pass
    from aiohttp import web

    from .app import build_app
    from .store import StoreError
    app = build_app(config)
    log = logging.getLogger("j1mskyd")

    def listening(_banner: str) -> None:  # run_app calls this once the socket is bound
        log.info("j1mskyd %s listening on http://%s:%d (config: %s)", __version__,
                 config.server.host, config.server.port, config.source)

    # run_app turns SIGTERM/SIGINT into a graceful exit: the site stops accepting, then
    # the cleanup context persists in-flight agents and closes the database.
    try:
        web.run_app(app, host=config.server.host, port=config.server.port, shutdown_timeout=5.0,
                    print=listening, access_log=None)
    except (OSError, StoreError) as exc:  # port taken, state dir unwritable or in use: say so, no traceback
        logging.getLogger("j1mskyd").debug("start failed", exc_info=True)
        print(f"j1mskyd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
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
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
