"""sqlite3 (WAL) store: the one place that opens and writes the database.

Writes are *group-committed*: callers queue a unit of statements and await its
future; a single flusher runs every pending unit in one transaction on the store's own
writer thread (again with one SAVEPOINT per unit when one fails, so a bad unit fails alone) and resolves the
futures only after COMMIT.  Under load this turns hundreds of commits per second
into a few, which is what keeps an SD card alive and spawn latency flat, while a
caller still never hears "done" before its row is on disk.

``synchronous = "full"`` (the default) syncs the WAL at every group commit, before any
future resolves: a caller told "done" keeps its row through a power cut.  ``"normal"``
syncs only at checkpoints: it survives a crash or kill of the daemon, not of the machine
(see docs/operations.md, "Durability").

A full disk is survived here, in one place.  A group that fails for lack of space
("database or disk is full") is rolled back whole; its units stay queued, in order,
and are retried with backoff until they commit, while their callers keep waiting
and the data stays in memory: an agent's result, its ledger row, an event and its
webhook outbox rows are never dropped.  Only a unit submitted with
``fail_fast=True`` (a client's request: a spawn, a new key) is refused instead, with
:class:`StoreFull` (HTTP 507), and so is every such unit while the disk stays full.
Reads go on meanwhile.  :attr:`Store.full` says why writes wait (``/health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, TypeVar

from . import settings
from .crypto import CHECK_CONTEXT, KEY_FILE, DataCipher, DecryptError, load_or_create_key
from .durable import fsync_dir
from .errors import InsufficientStorage, ServiceUnavailable

__all__ = ["CLOSE_GRACE", "KEY_CHECK", "MIGRATIONS", "Queued", "SCHEMA_VERSION", "Statement", "Store", "StoreBusy",
           "StoreError", "StoreFull", "database_problem", "is_disk_full", "is_locked", "migrate"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Statement = tuple[str, Sequence[Any]]
# The write queue: each unit waiting to commit, with its future and whether it fails fast on a full disk.
_Queue = list[tuple[list[Statement], "asyncio.Future[None]", bool]]

# Forward-only migrations: MIGRATIONS[i] brings schema version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        agent_id       TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,              -- agent | team | member
        parent_id      TEXT,
        team           TEXT,
        model          TEXT NOT NULL,              -- requested alias (team id for a team agent)
        served_model   TEXT,                       -- alias that answered, after any fallback
        provider       TEXT,
        task           TEXT NOT NULL,
        priority       TEXT NOT NULL,
        timeout        REAL NOT NULL,
        status         TEXT NOT NULL,
        error          TEXT,
        result         TEXT,
        estimated_cost REAL NOT NULL,
        cost           REAL,
        input_tokens   INTEGER,
        output_tokens  INTEGER,
        runs           INTEGER NOT NULL DEFAULT 0, -- times started, bounds re-runs after a crash
        attempts       INTEGER NOT NULL DEFAULT 0, -- provider calls made
        created_at     REAL NOT NULL,
        started_at     REAL,
        completed_at   REAL
    );
    CREATE INDEX agents_status ON agents(status);
    CREATE INDEX agents_created ON agents(created_at);
    CREATE INDEX agents_parent ON agents(parent_id) WHERE parent_id IS NOT NULL;
    CREATE TABLE usage (
        id            INTEGER PRIMARY KEY,
        ts            REAL NOT NULL,
        agent_id      TEXT NOT NULL,
        model         TEXT NOT NULL,
        provider      TEXT NOT NULL,
        input_tokens  INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost          REAL NOT NULL
    );
    CREATE INDEX usage_ts ON usage(ts);
    """,
    # 2: who spent it.  The API key id on agents and on the ledger, for per-key budgets,
    # cost-spike protection and billing by key.
    """
    ALTER TABLE agents ADD COLUMN api_key TEXT NOT NULL DEFAULT 'anonymous';
    ALTER TABLE usage ADD COLUMN api_key TEXT NOT NULL DEFAULT 'anonymous';
    """,
    # 3: security.  API keys (token hashes only; the signing secret encrypted with the
    # data key), settings changed over the API, IP blocks, the audit log, idempotency
    # records, and per-agent privacy (retention, purge).
    """
    CREATE TABLE api_keys (
        key_id            TEXT PRIMARY KEY,
        name              TEXT NOT NULL,
        token_hash        TEXT NOT NULL UNIQUE,
        secret            TEXT NOT NULL,
        scopes            TEXT NOT NULL,
        require_signature INTEGER NOT NULL DEFAULT 0,
        created_at        REAL NOT NULL,
        last_used_at      REAL,
        expires_at        REAL,
        revoked_at        REAL,
        revoke_reason     TEXT,
        rotated_to        TEXT
    );
    CREATE TABLE settings (
        name       TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE ip_blocks (
        ip         TEXT PRIMARY KEY,
        reason     TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL
    );
    CREATE TABLE audit_log (
        id            INTEGER PRIMARY KEY,
        ts            REAL NOT NULL,
        event         TEXT NOT NULL,
        severity      TEXT NOT NULL,
        api_key_id    TEXT,
        ip_address    TEXT,
        user_agent    TEXT,
        request_id    TEXT,
        resource_type TEXT,
        resource_id   TEXT,
        details       TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_ts ON audit_log(ts);
    CREATE INDEX audit_event ON audit_log(event, ts);
    CREATE TABLE idempotency (
        api_key_id   TEXT NOT NULL,
        idem_key     TEXT NOT NULL,
        method       TEXT NOT NULL,
        path         TEXT NOT NULL,
        body_hash    TEXT NOT NULL,
        status       INTEGER NOT NULL,
        response     BLOB NOT NULL,
        content_type TEXT NOT NULL,
        created_at   REAL NOT NULL,
        PRIMARY KEY (api_key_id, idem_key)
    );
    CREATE INDEX idempotency_created ON idempotency(created_at);
    ALTER TABLE agents ADD COLUMN retention_days REAL;
    ALTER TABLE agents ADD COLUMN purged_at REAL;
    """,
    # 4: events and webhooks.  Events are the durable log behind GET /events, SSE and
    # WebSocket; deliveries are the webhook outbox, written in the same transaction as
    # the state change they announce.
    """
    CREATE TABLE events (
        id   INTEGER PRIMARY KEY,
        ts   REAL NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX events_ts ON events(ts);
    CREATE TABLE webhooks (
        webhook_id    TEXT PRIMARY KEY,
        url           TEXT NOT NULL,
        sink          TEXT NOT NULL,
        events        TEXT NOT NULL,
        secret        TEXT NOT NULL,
        status        TEXT NOT NULL,
        description   TEXT,
        api_key_id    TEXT,
        agent_id      TEXT,
        created_at    REAL NOT NULL,
        last_triggered REAL
    );
    CREATE TABLE deliveries (
        delivery_id     TEXT PRIMARY KEY,
        webhook_id      TEXT NOT NULL,
        event_id        INTEGER NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT,
        last_status     INTEGER,
        created_at      REAL NOT NULL,
        delivered_at    REAL
    );
    CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
    CREATE INDEX deliveries_webhook ON deliveries(webhook_id, created_at);
    """,
    # 5: pricing history.  Every quote and decision priced by /pricing/quote and
    # /pricing/decision, and the deal-desk exception an escalated decision opens, so
    # that weekly metrics, experiment summaries and exception aging come from history.
    # Numbers and labels only (no task text): not sealed.
    """
    CREATE TABLE pricing_quotes (
        quote_id          TEXT PRIMARY KEY,
        created_at        REAL NOT NULL,
        model             TEXT NOT NULL,
        complexity        TEXT NOT NULL,
        segment           TEXT NOT NULL,
        delivery_type     TEXT NOT NULL,
        estimated_input   INTEGER NOT NULL,
        estimated_output  INTEGER NOT NULL,
        internal_cost     REAL NOT NULL,
        recommended_price REAL NOT NULL,
        gross_margin_pct  REAL NOT NULL,
        is_compliant      INTEGER NOT NULL,
        decision_status   TEXT,
        approver          TEXT,
        variant           TEXT,
        experiment        TEXT,
        api_key_id        TEXT
    );
    CREATE INDEX pricing_quotes_created ON pricing_quotes(created_at);
    CREATE TABLE pricing_exceptions (
        exception_id  TEXT PRIMARY KEY,
        quote_id      TEXT NOT NULL UNIQUE,
        opened_at     REAL NOT NULL,
        closed_at     REAL,
        closed_by     TEXT,
        resolution    TEXT
    );
    CREATE INDEX pricing_exceptions_open ON pricing_exceptions(closed_at, opened_at);
    """,
    # 6: a webhook secret per key (sealed like the request secret), so that a receiver that
    # verifies webhooks cannot sign requests.  NULL for the keys made before: their spawns'
    # webhooks stay signed with the request secret until the webhook secret is rotated
    # (receivers already set up keep working; see keys.py).
    """
    ALTER TABLE api_keys ADD COLUMN webhook_secret TEXT;
    """,
    # 7: chat agents (calls through the OpenAI/Anthropic front door).  When the first text
    # reached the caller (time to first token), and the tool calls of the answer: a JSON list,
    # sealed like result (the arguments are the caller's data).  NULL for every other agent.
    """
    ALTER TABLE agents ADD COLUMN first_token_at REAL;
    ALTER TABLE agents ADD COLUMN tool_calls TEXT;
    """,
    # 8: keys as tenants.  A key's own limits (NULL everywhere: none, as for every key made
    # before), projects as budget scopes above keys (a key belongs to at most one), the
    # project an agent and a ledger row were spent under (so that moving a key later does
    # not move its past spend), and whose work an event is about (NULL: a daemon-wide event,
    # such as a budget alert).  budget_anchor: the start of the budget's first period (UTC
    # midnight of the day it was set); its periods are budget_duration long from there.
    """
    ALTER TABLE api_keys ADD COLUMN max_budget REAL;
    ALTER TABLE api_keys ADD COLUMN budget_duration TEXT;
    ALTER TABLE api_keys ADD COLUMN budget_anchor REAL;
    ALTER TABLE api_keys ADD COLUMN models TEXT;
    ALTER TABLE api_keys ADD COLUMN max_concurrency INTEGER;
    ALTER TABLE api_keys ADD COLUMN limits TEXT;
    ALTER TABLE api_keys ADD COLUMN metadata TEXT;
    ALTER TABLE api_keys ADD COLUMN project_id TEXT;
    CREATE TABLE projects (
        project_id      TEXT PRIMARY KEY,
        name            TEXT NOT NULL,
        max_budget      REAL,
        budget_duration TEXT,
        budget_anchor   REAL,
        metadata        TEXT,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE UNIQUE INDEX projects_name ON projects(name);
    ALTER TABLE agents ADD COLUMN project_id TEXT;
    ALTER TABLE usage ADD COLUMN project_id TEXT;
    ALTER TABLE events ADD COLUMN api_key TEXT;
    CREATE INDEX agents_key ON agents(api_key, created_at);
    CREATE INDEX usage_key_ts ON usage(api_key, ts);
    CREATE INDEX usage_project_ts ON usage(project_id, ts) WHERE project_id IS NOT NULL;
    CREATE INDEX events_key ON events(api_key, id) WHERE api_key IS NOT NULL;
    """,
    # 9: the dashboard's series (timeseries.py), rolled up per hour and per UTC day: agents
    # ended by status, spend by model, run time by provider (count, sum, and per histogram
    # bucket `le` for p50/p95; '' on the count/sum row).  Bounded by an hourly purge.
    """
    CREATE TABLE metric_points (
        metric      TEXT NOT NULL,
        granularity INTEGER NOT NULL,
        bucket      INTEGER NOT NULL,
        label       TEXT NOT NULL,
        le          TEXT NOT NULL,
        count       INTEGER NOT NULL,
        sum         REAL NOT NULL,
        PRIMARY KEY (metric, granularity, bucket, label, le)
    ) WITHOUT ROWID;
    """,
    # 10: tasks (tasks.py, task_store.py): work that passes through roles, one step agent at a
    # time, with the critic's verdicts and the escalations to stronger models.  A step's agent is
    # an ordinary agent (agents.agent_id = task_steps.agent_id); the task's text columns
    # (description, results, feedback, metadata, context) and a step's output are sealed like an
    # agent's task and result.  escalations.status: pending_approval | approved | rejected | completed.
    # agents gain the output cap and temperature a step's role (or its submission) asks for.
    """
    ALTER TABLE agents ADD COLUMN max_tokens INTEGER;  -- a step's role preferences (agent_record.Agent)
    ALTER TABLE agents ADD COLUMN temperature REAL;
    CREATE TABLE tasks (
        task_id             TEXT PRIMARY KEY,
        api_key             TEXT NOT NULL,
        project_id          TEXT,
        title               TEXT NOT NULL,
        description         TEXT,
        type                TEXT NOT NULL,
        status              TEXT NOT NULL,
        priority            TEXT NOT NULL,
        assignee_role       TEXT,
        workflow            TEXT NOT NULL,
        files_to_modify     TEXT NOT NULL DEFAULT '[]',
        acceptance_criteria TEXT NOT NULL DEFAULT '[]',
        dependencies        TEXT NOT NULL DEFAULT '[]',
        tags                TEXT NOT NULL DEFAULT '[]',
        deadline            REAL,
        metadata            TEXT,
        context             TEXT,
        preferences         TEXT,
        results             TEXT,
        feedback            TEXT,
        error               TEXT,
        position            INTEGER NOT NULL DEFAULT 0,  -- index in the workflow of the step it is at
        created_at          REAL NOT NULL,
        updated_at          REAL NOT NULL,
        started_at          REAL,
        ended_at            REAL
    );
    CREATE INDEX tasks_key ON tasks(api_key, created_at);
    CREATE INDEX tasks_status ON tasks(status);
    CREATE TABLE task_steps (
        step_id      TEXT PRIMARY KEY,
        task_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        position     INTEGER NOT NULL,
        role         TEXT NOT NULL,
        kind         TEXT NOT NULL,
        agent_id     TEXT UNIQUE,
        model        TEXT NOT NULL,                -- the alias asked for
        served_model TEXT,                         -- the alias that answered (after fallback)
        esc_id       TEXT,                         -- the escalation this run carries out
        selection    TEXT,
        verdict      TEXT,
        reasons      TEXT,
        output       TEXT,
        status       TEXT NOT NULL,
        cost         REAL,
        estimated_cost REAL NOT NULL DEFAULT 0,
        input_tokens INTEGER,
        output_tokens INTEGER,
        error        TEXT,
        created_at   REAL NOT NULL,
        started_at   REAL,
        ended_at     REAL,
        UNIQUE (task_id, seq)
    );
    CREATE INDEX task_steps_status ON task_steps(status);
    CREATE TABLE escalations (
        esc_id          TEXT PRIMARY KEY,
        task_id         TEXT NOT NULL,
        api_key         TEXT NOT NULL,
        role            TEXT,
        position        INTEGER,
        original_model  TEXT,
        target_model    TEXT NOT NULL,
        reason          TEXT NOT NULL,
        context         TEXT,
        estimated_cost  REAL,
        actual_cost     REAL,
        status          TEXT NOT NULL,
        priority        TEXT,
        submitted_by    TEXT NOT NULL,
        submitted_at    REAL NOT NULL,
        decided_by      TEXT,
        decided_at      REAL,
        decision_reason TEXT,
        comments        TEXT,
        result          TEXT,
        auto            INTEGER NOT NULL DEFAULT 0,
        manual          INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX escalations_task ON escalations(task_id, submitted_at);
    CREATE INDEX escalations_key ON escalations(api_key, submitted_at);
    """,
    # 11: a provider call that a crash cut (runtime._bill_cut_call) is billed at its worst case
    # on top of the agent's reservation, not out of it: marked, so that a later start tells it
    # from the failed calls billed inside the reservation (ledger.billed_by_agent).
    """
    ALTER TABLE usage ADD COLUMN cut INTEGER NOT NULL DEFAULT 0;
    """,
    # 12: events_key (api_key, id) goes.  Its one reader, an agent's events (events.agent_event_ids:
    # a key's events within the agent's life), read through it every event the key ever had and
    # kept those in the window; events_ts reads the window alone.  And every commit that stored
    # events wrote its pages too: 2.5 of the ~33 pages a commit group of agents adds to the WAL.
    """
    DROP INDEX IF EXISTS events_key;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_INLINE_UNITS = 8          # batches up to this size commit on the loop (synchronous=normal)
_CHECKPOINT_EVERY = 256    # commits between WAL checkpoints (about 1-4 MB of WAL)
_RETRY_FIRST = 0.05        # seconds before the first retry of a group that found the disk full
_RETRY_MAX = 2.0           # the longest wait between retries: space that returns is used soon
# Rewrites the database header's page (same value): a real write, to find out whether space is back.
_PROBE: list[Statement] = [(f"PRAGMA user_version = {len(MIGRATIONS)}", ())]
CLOSE_GRACE = 10.0         # at stop, how long writes wait for space (systemd's TimeoutStopSec is 20 s)


class StoreError(Exception):
    pass


class StoreFull(StoreError, InsufficientStorage):
    """A write refused because the disk is full: 507 ``INSUFFICIENT_STORAGE`` to a client."""


class StoreBusy(StoreError, ServiceUnavailable):
    """A write refused because another process holds the database's write lock (past the
    busy timeout): 503 with Retry-After to a client; work already accepted waits in memory."""


def is_disk_full(exc: BaseException) -> bool:
    """Did this fail for lack of space (SQLITE_FULL, ENOSPC, EDQUOT)?"""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # absent on an exception made by hand
        if code is not None:
            return code & 0xFF == sqlite3.SQLITE_FULL
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_locked(exc: BaseException) -> bool:
    """Did this fail because another process held the write lock past busy_timeout (SQLITE_BUSY)?
    Like a full disk it passes: the group waits and is retried, where it was
    failed and a finished agent's result and cost were lost (the agent ran again at the next start)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF == sqlite3.SQLITE_BUSY  # another connection holds it (LOCKED: this one does)
        return "database is locked" in str(exc)
    return False


def _passes(exc: BaseException) -> bool:
    """A failure that is no unit's fault and goes away by itself: the whole group waits for it."""
    return is_disk_full(exc) or is_locked(exc)


# None binds as NULL either way; the adapter only makes it cheaper.  The sqlite3 module sends
# every parameter that is not exactly an int, float, str or bytearray through its adapter
# lookup; for None, with no adapter registered, that lookup ends by asking its protocol type for
# ``__adapt__``, which on Python 3.11 formats an AttributeError and throws it away: ~3,300
# instructions a NULL, and an agent binds about 22 of them (its row's empty columns): 4.3 % of
# an agent under callgrind.  With this entry the lookup stops at the registry and calls a C
# function that returns None (an empty dict's ``get``): ~1,100.  Process-wide, like every sqlite3
# adapter, and harmless to share: the value bound is the same NULL for every connection.
_NOTHING: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NOTHING.get)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3 decides where each one ends)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        raise StoreError(f"incomplete statement in migration: {current.strip()[:60]}")
    return out


# Where sealed values live, with the column that completes their context ("<id>/<column>").
_SEALED_SAMPLES = (("agents", "agent_id", "task"), ("api_keys", "key_id", "secret"))
# The settings row holding the data key's check value (crypto.DataCipher.seal_check): the key is
# checked at every start, even when nothing else sealed would fail on a wrong key yet.
KEY_CHECK = CHECK_CONTEXT


def _sealed_sample(conn: sqlite3.Connection) -> tuple[str, str] | None:
    """One sealed value of the database and its context, or None when nothing is sealed."""
    for table, id_column, column in _SEALED_SAMPLES:
        try:
            row = conn.execute(f"SELECT {id_column}, {column} FROM {table} WHERE {column} LIKE 'enc1:%' "
                               "LIMIT 1").fetchone()
        except sqlite3.OperationalError:  # an older schema without that table
            continue
        if row is not None:
            return row[1], f"{row[0]}/{column}"
    return None


def _has_sealed_data(path: str) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return _sealed_sample(conn) is not None


def database_problem(path: str, exc: sqlite3.Error) -> str:
    """``<path>: <reason>; <what to do>``, one line for an operator whose database cannot be used."""
    if isinstance(exc, sqlite3.OperationalError):  # locked, unreadable, no space: the file may be fine
        hint = "check that the state dir is writable by this user and that its disk has space"
    else:  # not a database, or damaged
        hint = (f"restore it together with data.key from your backup, or move {os.path.basename(path)} and its "
                "-wal/-shm files aside to start with an empty database")
    return f"{path}: {exc}; {hint}"


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; refuse a database from a newer daemon.  Returns
    how many migrations ran (0: the schema was current)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this j1mskyd understands "
            f"({SCHEMA_VERSION}); upgrade j1mskyd or restore a matching backup"
        )
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[target]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={target + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("database migrated to schema version %d", target + 1)
    return SCHEMA_VERSION - version


class _UnitFailed(Exception):
    """A unit of a group run without savepoints failed: run the group again with them."""


# sqlite errors, and values that cannot be bound (a lone surrogate, an int beyond 64 bits)
_UNIT_ERRORS = (sqlite3.Error, ValueError, OverflowError)


# Statements that read and write one table and no other: an INSERT of values, an UPDATE without
# FROM, a DELETE; none of them with a SELECT anywhere (a subquery reads another table).
_ONE_TABLE = re.compile(r"\s*(?:INSERT INTO\s+(\w+)\s*\([^()]*\)\s*VALUES\s*\(|UPDATE\s+(\w+)\s+SET\s"
                        r"|DELETE FROM\s+(\w+)(?:\s|$))", re.IGNORECASE)
_TABLE_OF: dict[str, str | None] = {}  # SQL -> its one table (None: a barrier); the daemon's few dozen SQL texts


def _table_of(sql: str) -> str | None:
    """The one table ``sql`` touches, or None when it may touch more (or cannot be told)."""
    table = _TABLE_OF.get(sql, "")
    if table == "":
        match = _ONE_TABLE.match(sql)
        lowered = sql.lower()
        table = None
        if match and "select" not in lowered and not (match.group(2) and " from " in lowered):
            table = (match.group(1) or match.group(2) or match.group(3)).lower()
        _TABLE_OF[sql] = table
    return table


def _batched(units: list[list[Statement]]) -> list[tuple[str, list[Sequence[Any]]]]:
    """A group's statements as runs of one SQL text, for one ``executemany`` each, with the
    same effect as running them one by one in order.

    A statement joins the latest run of its table when that run has its SQL: it then runs
    before statements of *other* tables that came between, never before an earlier statement of
    its own table.  That is the same database at the end, because such a statement reads and
    writes its table alone (the schema has no triggers and no foreign keys), so every statement
    sees its table exactly as in order.  A statement that may touch more than its table (a
    SELECT in it, a PRAGMA, anything else) is a barrier: it runs after everything before it,
    and nothing after it joins a run before it.  A group's ~7 statements an agent are ~4 texts
    (an agent's row, its events, its ledger row, its audit entries): one ``execute`` each was
    ~2,800 instructions more per statement than a place in an ``executemany`` (callgrind).
    """
    runs: list[tuple[str, list[Sequence[Any]]]] = []
    latest: dict[str, tuple[str, list[Sequence[Any]]]] = {}  # table -> its latest run
    for unit in units:
        for sql, params in unit:
            table = _TABLE_OF.get(sql, "")
            if table == "":
                table = _table_of(sql)
            if table is None:
                runs.append((sql, [params]))
                latest.clear()
                continue
            run = latest.get(table)
            if run is not None and run[0] == sql:
                run[1].append(params)
            else:
                run = latest[table] = (sql, [params])
                runs.append(run)
    return runs


# An INSERT of one row of placeholders and nothing after it (no ON CONFLICT, no RETURNING): rows
# of it run as one statement of several VALUES rows, which inserts them in order exactly as one
# statement each would.  That is one sqlite3_step for many rows, and each step is a release and
# a re-take of the GIL by the writer thread (a hand-off whenever the loop wants it meanwhile):
# ~6.7 -> ~4.5 us per row here (an agent's group has five to six such rows: its events, its audit
# entries, its ledger row, its insert).
_PLAIN_INSERT = re.compile(r"\s*INSERT INTO\s+\w+\s*\([^()]*\)\s*VALUES\s*(\(\s*\?\s*(?:,\s*\?\s*)*\))\s*$",
                           re.IGNORECASE)
_ROW_OF: dict[str, str | None] = {}  # SQL -> its VALUES row "(?, ...)" when it is a plain INSERT, else None
_MULTI: dict[tuple[str, int], str] = {}  # (SQL, k) -> the same INSERT with k VALUES rows
_MAX_ROWS = 32       # rows in one statement: runs are cut into 32, 16, 8, 4, 2, 1 (six texts a table)
_MAX_PARAMS = 999    # host parameters in one statement (sqlite's limit before 3.32 is 999)
_POSITIONAL = (tuple, list)  # parameters that can be laid end to end (named ones, a dict, cannot)


def _values_row(sql: str) -> str | None:
    row = _ROW_OF.get(sql, "")
    if row == "":
        match = _PLAIN_INSERT.match(sql)
        row = _ROW_OF[sql] = match.group(1) if match else None
    return row


def _insert_rows(execute: Callable[..., Any], sql: str, row: str, rows: list[Sequence[Any]]) -> None:
    """``rows`` of the plain INSERT ``sql`` (whose VALUES row is ``row``) as statements of several
    rows each, in order: 13 rows run as 8, 4 and 1."""
    width = len(rows[0])
    cap = max(min(_MAX_ROWS, _MAX_PARAMS // max(width, 1)), 1)
    cap = 1 << (cap.bit_length() - 1)  # a power of two: few distinct texts for sqlite's statement cache
    i, n = 0, len(rows)
    while i < n:
        k = min(cap, 1 << ((n - i).bit_length() - 1))
        if k == 1:
            execute(sql, rows[i])
        else:
            text = _MULTI.get((sql, k))
            if text is None:
                head = sql[:_PLAIN_INSERT.match(sql).start(1)]  # type: ignore[union-attr]  # a plain INSERT
                text = _MULTI[(sql, k)] = head + ", ".join([row] * k)
            execute(text, list(chain.from_iterable(rows[i:i + k])))
        i += k


def _run_together(conn: sqlite3.Connection, units: list[list[Statement]]) -> list[Exception | None]:
    cursor = conn.cursor()  # one cursor for the group: conn.execute makes one per statement
    execute, executemany = cursor.execute, cursor.executemany
    try:
        for sql, rows in _batched(units):
            if len(rows) == 1:
                execute(sql, rows[0])
                continue
            row = _values_row(sql)
            if row is not None and all(type(params) in _POSITIONAL for params in rows) \
                    and len({len(params) for params in rows}) == 1:
                _insert_rows(execute, sql, row, rows)
            else:
                executemany(sql, rows)
    except _UNIT_ERRORS as exc:
        if _passes(exc):
            raise  # not a unit's fault: the whole group waits (for space, for the lock), in order
        raise _UnitFailed from exc
    return [None] * len(units)


def _run_apart(conn: sqlite3.Connection, units: list[list[Statement]]) -> list[Exception | None]:
    """Each unit inside its own savepoint: one that fails is rolled back, the others commit."""
    errors: list[Exception | None] = []
    execute = conn.cursor().execute
    for unit in units:
        conn.execute("SAVEPOINT unit")
        try:
            for sql, params in unit:
                execute(sql, params)
        except _UNIT_ERRORS as exc:
            if _passes(exc):
                raise
            conn.execute("ROLLBACK TO unit")
            errors.append(exc)
        else:
            errors.append(None)
        conn.execute("RELEASE unit")
    return errors


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class _Writer:
    """The store's own thread for the write connection: group commits, checkpoints and the
    final close, one job at a time in the order given.

    It replaces the loop's default executor for writes: a round trip through
    ``run_in_executor`` cost ~118,000 instructions here (a concurrent Future with its
    Condition, the work item, the pool's idle semaphore, the two futures chained with their
    callbacks), this one ~17,000 (a queue put, and ``call_soon_threadsafe`` back); and a
    commit no longer waits behind reads, which keep the default executor.  Whoever awaits a
    job hears of it only once it has returned, as before: a COMMIT has happened (or failed)
    when the future resolves.  A daemon thread: at exit it stops wherever it is, as the
    process would at a kill, which sqlite survives."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the writer thread; the future has its result or its exception."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def stop(self) -> None:
        """End the thread once the jobs given before are done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _main(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            loop, fut, fn, args = job
            job = None  # hold nothing of a finished job while waiting for the next
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to whoever awaits the job, as an executor does
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the loop closed meanwhile: nobody is left to tell
                pass
            loop = fut = fn = args = result = error = None


class Queued:
    """A unit queued with :meth:`Store.queue`: its statements, its future, and its place in the
    queue, which :meth:`Store.withdraw` needs: which queue (its number, not the list, which once
    taken is a whole commit group: kept by a runtime for as long as an agent runs, it kept every
    unit of that group with it) and where in it."""

    __slots__ = ("statements", "future", "_queue", "_index")

    def __init__(self, statements: list[Statement], future: asyncio.Future[None],
                 queue: int, index: int) -> None:
        self.statements = statements
        self.future = future
        self._queue = queue
        self._index = index


class Store:
    def __init__(self, path: str, *, synchronous: str = "full", encrypt: bool = True,
                 exclusive: bool = True) -> None:
        self.path = path
        self._exclusive = exclusive  # False for short CLI edits (keys) beside a running daemon
        self._encrypt = encrypt
        self.cipher: DataCipher | None = None  # set by open(): agent task/result sealing
        self._synchronous = synchronous
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()
        self._lock_fd: int | None = None
        self._commits_since_checkpoint = 0
        self._pending: _Queue = []  # (unit, done, fail_fast)
        self._queue_number = 0  # which list _pending is: each one taken or replaced gets the next (_replace_queue)
        self._flushing: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0  # number of transactions committed (benchmarks read it)
        # Why writes are waiting ("database or disk is full"), None while they commit.
        # Why writes wait in memory now (the disk is full, or another process holds the write
        # lock: ``_locked``), None when they do not; /health and every fail-fast write read it.
        self.full: str | None = None
        self._locked = False
        self.full_since: float | None = None  # time.time() of the first failure of this outage
        self.state_changes = 0  # bumped when ``full`` changes (GET /health's cache keys on it)
        self._stalled = asyncio.Event()   # set while the disk is full: flush() stops waiting
        self._wake = asyncio.Event()      # cuts a retry's backoff short (at stop)
        self._writer = _Writer("j1msky-store-writer")  # the write connection's work (see _Writer)
        self._give_up_at: float | None = None  # loop time after which waiting writes are dropped

    # -- lifecycle -------------------------------------------------------------
    def open(self) -> None:
        """Open (creating if needed, mode 0600) and migrate.  Blocking; call at start."""
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        # One daemon per database: a second one would re-run the first one's agents.
        if self._exclusive:
            self._lock()
        try:
            self._open()
        except BaseException as exc:
            for conn in (self._wconn, self._rconn):
                if conn is not None:
                    conn.close()
            self._wconn = self._rconn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if isinstance(exc, sqlite3.Error):  # not a database, damaged, unreadable: say which, and what to do
                raise StoreError(database_problem(self.path, exc)) from exc
            raise

    def _open(self) -> None:
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            fsync_dir(os.path.dirname(self.path))  # the new file's name, like sqlite does for its WAL
        key_path = os.path.join(os.path.dirname(self.path) or ".", KEY_FILE)
        if self._encrypt:
            if existed and not os.path.exists(key_path) and _has_sealed_data(self.path):
                # A new key could never open the old data, and would hide that it is gone.
                raise StoreError(f"{key_path} is missing but {self.path} holds data "
                                 "encrypted with it: restore data.key from the backup you made with the database")
            try:
                self.cipher = DataCipher(load_or_create_key(os.path.dirname(key_path)))
            except DecryptError as exc:  # a damaged key file
                raise StoreError(f"{exc}; restore data.key from the backup you made with the database") from None
        self._wconn = self._writer_connection()
        migrated = migrate(self._wconn)
        if self.cipher is not None:
            self._check_data_key(key_path)
        if migrated:
            self._fresh_writer()
        self._rconn = _connect(self.path, self._synchronous)

    def _fresh_writer(self) -> None:
        """Write through a new connection from now on.  The one that ran migrations keeps, for as
        long as it is open, every statement of theirs prepared in its statement cache and the
        pages they wrote in its page cache, none of them needed again (~0.4 MB of sqlite's memory
        after a first start, the same as a later start's afterwards).  The new one is opened
        before the old one closes, so that close is not the database's last: no checkpoint."""
        assert self._wconn is not None
        old, self._wconn = self._wconn, None
        try:
            self._wconn = self._writer_connection()
        finally:
            old.close()

    def _writer_connection(self) -> sqlite3.Connection:
        conn = _connect(self.path, self._synchronous)
        # Checkpoints are ours (see _flush_loop): sqlite's automatic one would run inside
        # whichever commit crosses the threshold, possibly on the event loop.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    def _check_data_key(self, key_path: str) -> None:
        """Refuse a data key that is not the one this database was sealed with.

        The check value is written the first time a key opens the database (a new one, or
        one from before the check existed, once a sealed value there opened with it).
        """
        assert self.cipher is not None and self._wconn is not None
        check = settings.get(self._wconn, KEY_CHECK)
        if check is not None:
            right = self.cipher.opens_check(check)
        else:
            sample = _sealed_sample(self._wconn)
            right = sample is None or self.cipher.opens(*sample)
        if not right:
            raise StoreError(f"{key_path}: not the data key {self.path} was encrypted with; put back the "
                             "data.key backed up with this database (or restore both from the same backup)")
        if check is None or not self.cipher.is_current_check(check):
            # A check value sealed by an older daemon is replaced with today's form, which needs no
            # AES to verify: later starts then never load `cryptography` just to check the key.
            # (The value is a function of the key: a racing writer could only write the same.)
            try:
                self._wconn.execute(*settings.put(KEY_CHECK, self.cipher.seal_check(), time.time()))
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                log.warning("data key check value not written yet (%s); written at a later start", exc)

    def _lock(self) -> None:
        self._lock_fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(f"{self.path} is in use by another j1mskyd process") from None

    async def close(self) -> None:
        """Commit what is queued and close.  Writes still waiting for space get
        :data:`CLOSE_GRACE` seconds more (see :meth:`give_up_after`), then are dropped, loudly."""
        if self._give_up_at is None:
            self.give_up_after(CLOSE_GRACE)
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._closed = True
        if self._wconn is not None:
            try:
                await self._writer.run(self._checkpoint, "TRUNCATE")
            except sqlite3.Error as exc:  # a busy reader; the next start checkpoints anyway
                log.warning("final checkpoint skipped: %s", exc)
        # Under the read lock, in the executor: a read still running in another thread
        # (a webhook worker's, say) must finish before its connection goes; closing it
        # underneath crashed the interpreter in sqlite3 (a segfault seen on bookworm).
        try:
            await self._writer.run(self._close_connections)
        finally:
            self._writer.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- writes ------------------------------------------------------------------
    def submit(self, statements: Iterable[Statement], *, fail_fast: bool = False) -> asyncio.Future[None]:
        """Queue one atomic unit of statements; the future resolves after COMMIT.

        While the disk is full the unit waits, queued in order, and commits once space
        returns.  With ``fail_fast`` (a client's request, which must not hang) it fails
        with :class:`StoreFull` instead.
        """
        if self._closed:
            raise StoreError("store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if fail_fast and self.full is not None:  # known full (and probed until it is not): no need to try
            fut.set_exception(self._refusal())
            return fut
        self._pending.append((list(statements), fut, fail_fast))
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush_loop())
        return fut

    def queue(self, statements: list[Statement]) -> Queued:
        """:meth:`submit`, for a unit that a later one may make useless (see :meth:`withdraw`)."""
        fut = self.submit(statements)
        return Queued(statements, fut, self._queue_number, len(self._pending) - 1)

    def withdraw(self, queued: Queued) -> bool:
        """Take back a queued unit that a later unit makes useless, while the flusher has not
        taken it yet: it then writes nothing (its future still resolves, with its group).

        True only while the unit waits in the queue: it would have committed in the same
        group as any unit queued now, so leaving it out changes what a crash can leave on
        disk in nothing, provided the later unit writes what it wrote.  False once it is
        being committed, committed, or requeued after a full disk: it then stands.
        """
        if queued._queue != self._queue_number or self._closed:
            return False
        pending = self._pending
        unit, fut, fail_fast = pending[queued._index]
        if fut is not queued.future:  # cannot happen: a queue list only grows until it is taken
            return False
        pending[queued._index] = ([], fut, fail_fast)
        return True

    def discard(self, queued: Queued) -> bool:
        """Take back a queued unit that must not be written at all (it updates a row whose
        insert failed), wherever it waits: also after a full disk put it back in the queue
        (:meth:`withdraw` only takes back a unit from the queue it was put in).  It then
        writes nothing; its future still resolves, with its group.  False once it is being
        committed or committed."""
        if self.withdraw(queued):
            return True
        if self._closed:
            return False
        pending = self._pending
        for i, (_unit, fut, fail_fast) in enumerate(pending):  # a failure path: a scan is fine
            if fut is queued.future:
                pending[i] = ([], fut, fail_fast)
                return True
        return False

    def write(self, *statements: Statement, fail_fast: bool = False) -> asyncio.Future[None]:
        """:meth:`submit`, for a caller that awaits the commit (``await store.write(...)``): the
        store's own future, with no coroutine around it (one an agent, ~2,000 instructions)."""
        return self.submit(statements, fail_fast=fail_fast)

    async def flush(self) -> None:
        """Wait until every unit queued so far has committed (or failed), or until the
        disk is full: those units then stay queued and commit when space returns, and a
        reader must not wait for that.

        Units queued later are not waited for: an empty unit marks the place (units commit
        in order), so a reader does not wait for the writer to fall idle, which under a
        steady stream of writes (and an fsync per group) could be long.
        """
        if self._flushing is None or self._closed:
            return
        marker = self.submit(())
        marker.add_done_callback(lambda f: f.cancelled() or f.exception())  # its outcome is the units'
        while not marker.done() and self.full is None:
            stalled = asyncio.ensure_future(self._stalled.wait())
            try:
                await asyncio.wait((marker, stalled), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stalled.cancel()

    def give_up_after(self, seconds: float) -> None:
        """At stop: writes waiting for space wait ``seconds`` more, then fail with StoreFull."""
        self._give_up_at = asyncio.get_running_loop().time() + seconds
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def pending_writes(self) -> int:
        return len(self._pending)

    def refusal_status(self) -> int:
        """The HTTP status a client's write gets while writes wait: 503 locked, 507 full."""
        return 503 if self._locked else 507

    def _refusal(self) -> StoreError:
        if self._locked:
            return StoreBusy(f"The database is locked by another process ({self.full}); nothing was changed. "
                             "Work already accepted is kept and saved when the lock is released; retry.",
                             headers={"Retry-After": "5"})
        return StoreFull(f"Not enough disk space to save this request ({self.full}); nothing was changed. "
                         "Work already accepted is kept and saved when space returns; free space in the "
                         "state directory's filesystem and retry.")

    def _set_full(self, reason: str | None, locked: bool = False) -> None:
        self._locked = locked
        if reason == self.full:
            return
        if reason is None:
            log.warning("the database takes writes again: the writes kept in memory are saved (%.0f s without)",
                        time.time() - (self.full_since or time.time()))
            self.full_since = None
            self._stalled.clear()
        else:
            log.error("database write failed: %s; writes wait in memory (%d now) and are retried until it "
                      "succeeds; new spawns get %d", reason, len(self._pending), 503 if locked else 507)
            self.full_since = self.full_since or time.time()
            self._stalled.set()
        self.full = reason
        self.state_changes += 1

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        try:
            while self._pending or (self.full is not None and self._give_up_at is None):
                if not self._pending:
                    # Full, and nothing waits (only refused requests were in the group): keep
                    # finding out with a one-page write, so that /health and spawns see space return.
                    probe: asyncio.Future[None] = loop.create_future()
                    probe.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it
                    self._pending.append((_PROBE, probe, False))
                batch = self._replace_queue([])
                units = [u for u, _, _ in batch]
                try:
                    if self._synchronous == "normal" and len(units) <= _INLINE_UNITS and self.full is None:
                        # A small WAL commit without fsync costs less than the hop to a
                        # thread and back; checkpoints (which do fsync) stay off the loop, and so
                        # does every retry while writes wait (a locked database's try sits in
                        # sqlite's 5 s busy timeout: on the loop, the daemon froze).
                        errors = self._commit_batch(units)
                    else:
                        errors = await self._writer.run(self._commit_batch, units)
                except Exception as exc:  # the whole transaction failed (disk full, locked, I/O error)
                    if _passes(exc):
                        await self._wait_for_space(batch, exc, delay)
                        delay = min(delay * 2, _RETRY_MAX)
                        continue
                    log.error("database commit failed: %s", exc)
                    errors = [exc] * len(batch)
                else:
                    delay = _RETRY_FIRST
                    self._set_full(None)
                for (_, fut, _), err in zip(batch, errors):
                    if fut.done():
                        continue
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err if isinstance(err, StoreError) else StoreError(str(err)))
                if self._commits_since_checkpoint >= _CHECKPOINT_EVERY:
                    try:
                        await self._writer.run(self._checkpoint)
                    except sqlite3.Error as exc:  # committed all the same; the next round retries
                        log.warning("WAL checkpoint failed: %s", exc)
        finally:
            self._flushing = None

    async def _wait_for_space(self, batch: _Queue, exc: Exception, delay: float) -> None:
        """The group found the disk full and was rolled back whole: requeue its units ahead
        of newer ones (same order), refuse the fail-fast ones, and back off."""
        waiting = batch + self._pending  # those queued meanwhile too: a request must not wait a backoff
        self._replace_queue([item for item in waiting if not item[2]])
        self._set_full(str(exc), locked=is_locked(exc))
        for _, fut, fail_fast in waiting:
            if fail_fast and not fut.done():
                fut.set_exception(self._refusal())
        loop = asyncio.get_running_loop()
        if self._give_up_at is not None and loop.time() >= self._give_up_at:
            lost = self._replace_queue([])
            log.error("stopping while writes wait (%s): %d writes could not be saved (agents they finish run "
                      "again at the next start)", self.full, sum(unit is not _PROBE for unit, _, _ in lost))
            for _, fut, _ in lost:
                if not fut.done():
                    fut.set_exception(self._refusal())
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay if self._give_up_at is None
                                       else min(delay, max(self._give_up_at - loop.time(), 0.0))):
                await self._wake.wait()

    def _replace_queue(self, new: _Queue) -> _Queue:
        """Put ``new`` in the place of the queue, and return the queue as it was: a unit queued
        before waits in it no longer, and :meth:`withdraw` (by the queue's number) knows it."""
        old, self._pending = self._pending, new
        self._queue_number += 1
        return old

    def _commit_batch(self, units: list[list[Statement]]) -> list[Exception | None]:
        """Commit every unit in one transaction; a unit that fails is rolled back alone.

        The group runs first without savepoints: they were two statements per unit (five units
        an agent) for a failure that almost never happens.  When a statement fails (not for lack
        of space), the whole transaction is rolled back and the group runs again with one
        savepoint per unit, which isolates the failing unit exactly as before: the outcome is the
        same, only a failing group costs twice.
        """
        try:
            return self._transaction(lambda conn: _run_together(conn, units))
        except _UnitFailed:
            return self._transaction(lambda conn: _run_apart(conn, units))

    def _transaction(self, run: Callable[[sqlite3.Connection], list[Exception | None]]) -> list[Exception | None]:
        conn = self._wconn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            errors = run(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # some errors end the transaction themselves
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self._commits_since_checkpoint += 1
        return errors

    def _checkpoint(self, mode: str = "PASSIVE") -> None:
        assert self._wconn is not None
        self._wconn.execute(f"PRAGMA wal_checkpoint({mode})")
        self._commits_since_checkpoint = 0

    # -- reads -------------------------------------------------------------------
    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the read connection in the executor."""
        return await asyncio.get_running_loop().run_in_executor(None, self.read_sync, fn)

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking read, for start-up (recovery) and the CLI."""
        with self._rlock:
            if self._rconn is None:
                raise StoreError("store is not open")
            return fn(self._rconn)

    def _close_connections(self) -> None:
        with self._rlock:
            for conn in (self._wconn, self._rconn):
                if conn is not None:
                    conn.close()
            self._wconn = self._rconn = None
