"""What the state dir's commands share (``j1mskyd keys ...``, ``j1mskyd projects ...``): the
database opened beside a running daemon, and their refusals as one line each."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ValidationFailed
from .store import Store, StoreError, database_problem

__all__ = ["on_state"]


def on_state(config: Any, state_dir: str, work: Callable[[Store], Awaitable[int]], *, reading: bool = False) -> int:
    """The exit status of ``work(store)`` on the state dir's database, opened shared (a
    running daemon keeps its own connection).  A bad value (ValidationFailed) prints one line
    per field and exits 2; a database that cannot be opened (damaged, wrong data.key, full
    disk) one line and exits 1, the daemon's start-up refusals.

    The state dir used is named on stderr first: the default (``./.j1msky``) depends on the
    working directory, and a list run from the wrong one looked like "no keys".  A read
    (``reading``) never creates a state dir or a database: where there is none it says so
    and exits 1; a change creates them (keys made before the daemon's first start)."""
    db = os.path.join(state_dir, "j1msky.db")
    print(f"j1mskyd: state dir {state_dir}", file=sys.stderr)
    if reading and not os.path.exists(db):
        print(f"j1mskyd: no daemon state in {state_dir} (no j1msky.db): give the daemon's state dir with "
              "--state-dir, J1MSKY_STATE_DIR or the config's [server] state_dir", file=sys.stderr)
        return 1
    os.makedirs(state_dir, mode=0o700, exist_ok=True)

    async def run() -> int:
        store = Store(db, synchronous=config.store.synchronous, exclusive=False)
        await asyncio.get_running_loop().run_in_executor(None, store.open)
        try:
            return await work(store)
        except ValidationFailed as exc:
            for detail in exc.extra["details"]:
                print(f"j1mskyd: {detail['field']}: {detail['message']}", file=sys.stderr)
            return 2
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StoreError, sqlite3.DatabaseError, OSError) as exc:
        problem = database_problem(db, exc) if isinstance(exc, sqlite3.DatabaseError) else exc
        print(f"j1mskyd: cannot open the state: {problem}", file=sys.stderr)
        return 1
