"""Every field of every body, with every JSON type, is a 4xx in the one error envelope that
changed nothing, never a 5xx; and odd query values on every GET route likewise (issue 12, item 6).

The routes come from the app itself: every route under /api with a method that can carry a
body (from the router), and every documented request body with its fields (from GET
/api/openapi.json).  So a new route, or a new documented field, is fuzzed without editing this
file, and a body route without a valid example below fails the test until it gets one.

For each route: its valid example is answered as expected; then each field (top level and
nested, such as ``agents[0].task`` in a batch) is replaced with each JSON type; the fields of the
other routes' bodies are added (``"agents": 1`` on POST /spawn); the body itself is sent as each
JSON type and as broken JSON; and, on the routes that also take form fields, each field is sent
as odd text.  Every answer is < 500; every 4xx is the error envelope, a 400 VALIDATION_ERROR
names the field that was broken, and a 4xx leaves the database (row counts, settings, keys,
webhooks, blocks, exceptions), the budget and the live agents as they were.  The GET routes get
odd query values and odd path ids.  All in-process over a real loopback test server, with auth
on and the bootstrap admin key, so every route is reached past its scope check; about 9,000
requests.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import auth_config, bearer, bootstrap_key

HUGE = 10**30
BEYOND_FLOAT = 10**309  # an integer no float holds: math.isfinite raised OverflowError, a 500
LONG = "x" * 70_000
# Each JSON type, with the edges that have broken parsers before (bool is an int in Python,
# 1e308 overflows arithmetic, 10**30 overflows SQLite, a lone surrogate cannot be stored).
VALUES: tuple[Any, ...] = (None, True, False, 0, -1, 1.5, 1e308, HUGE, BEYOND_FLOAT, "", LONG, "string", "\ud800",
                           [], [1], {}, {"a": 1})
# A field of another route's body, on this route: one scalar, one list, one object (the type
# confusions: ``"agents": 1`` on POST /spawn was a 500).
FOREIGN_VALUES: tuple[Any, ...] = (1, [1], {"a": 1})
RAW_BODIES: tuple[bytes, ...] = (b"", b"   ", b"{", b"\xff\xfe", b"[" * 100_000, b'{"a": NaN}')
# Query values: a request line holds at most 8190 bytes (aiohttp's parser answers longer ones itself).
QUERY_VALUES: tuple[Any, ...] = tuple("x" * 2000 if v == LONG else v for v in VALUES)
ODD_QUERY = ("", "-1", "0", "1.5", "1e308", str(HUGE), str(BEYOND_FLOAT), "nan", "inf", "true", "null", "[]", "{}",
             '{"a":1}', "a,b", "x" * 2000, "9" * 5000, "%00", "\u00e9\u0663", " 1", "1_0", "+-1", "--1")
FORM = "application/x-www-form-urlencoded"
FORM_BODIES = ((FORM, b"a=%ff%fe&b"), (FORM, b"&&=&"), ("multipart/form-data", b"--x\r\n"),
               ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"model\"; "
                b"filename=\"f\"\r\n\r\nk2p5\r\n--x--\r\n"),
               ("multipart/form-data; boundary=x", b"--x\r\ngarbage"),
               # A part that is not text and not a file: aiohttp hands its bytes over (was a 500).
               ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\nk2p5\r\n--x--\r\n"))
ODD_PATH = ("x" * 3000, "..", "%2e%2e", "\u00e9", "0", "-1", str(HUGE))
METHODS_WITH_BODY = ("POST", "PUT", "PATCH", "DELETE")


# -- the valid examples ----------------------------------------------------------------------------

@dataclass
class Example:
    """A route's valid request: ``body`` (a function of the Api when it names this test's files;
    None: the route reads no body, and whatever is sent must not change its answer), the
    statuses its valid request gets, and ``target``, which makes the path parameters (called
    again after every success, which may use them up)."""

    body: Any
    ok: tuple[int, ...] = (200,)
    target: Callable[[Api], Awaitable[dict[str, str]]] | None = None


SPAWN = {"model": "k2p5", "task": "fuzz", "priority": "normal", "timeout": 30,
         "privacy": {"retention_days": 1, "detect_pii": True, "mask_pii_in_logs": True, "encrypt_output": True}}
QUOTE = {"model": "k2p5", "complexity": "medium", "estimated_input": 1200, "estimated_output": 600,
         "segment": "mid_market", "delivery_type": "task"}
# 50 % margin, below the task threshold of 55: the decision escalates and opens an exception.
ESCALATING = {"model": "opus", "estimated_input": 15000, "estimated_output": 2000, "complexity": "low",
              "segment": "startup"}
DECISIONS = [{"decision_status": "approved", "gross_margin_pct": 60.0, "exception_created": False,
              "exception_closed": False}]
VARIANTS = [{"variant": "control", "decision_status": "approved", "gross_margin_pct": 60.0}]


async def _agent(api: Api) -> dict[str, str]:
    """A finished agent (the offline provider answers at once)."""
    body = await api.ok("POST", "/spawn", SPAWN)
    await api.quiet()
    return {"agent_id": body["agent_id"]}


async def _key(api: Api) -> dict[str, str]:
    return {"key_id": (await api.ok("POST", "/keys", {"name": "target", "scopes": ["agents:read"]}))["key_id"]}


async def _project(api: Api) -> dict[str, str]:
    name = f"target {secrets.token_hex(4)}"  # names are unique
    return {"project_id": (await api.ok("POST", "/projects", {"name": name}))["project_id"]}


async def _webhook(api: Api) -> dict[str, str]:
    return {"webhook_id": (await api.ok("POST", "/webhooks", api.hook_body()))["webhook_id"]}


async def _delivery(api: Api) -> dict[str, str]:
    """A delivered delivery (a pending one cannot be redelivered)."""
    hook = await _webhook(api)
    delivery_id = (await api.ok("POST", "/webhooks/{webhook_id}/test", None, hook))["delivery_id"]
    for _ in range(500):
        rows = (await api.ok("GET", f"/webhooks/{hook['webhook_id']}/deliveries"))["data"]
        if any(r["delivery_id"] == delivery_id and r["status"] != "pending" for r in rows):
            return {**hook, "delivery_id": delivery_id}
        await asyncio.sleep(0.01)
    raise AssertionError(f"delivery {delivery_id} never left pending")


async def _pricing_webhook(api: Api) -> dict[str, str]:
    return {"webhook_id": (await api.ok("POST", "/pricing/webhook", {"url": api.hook_url()}))["webhook_id"]}


async def _exception(api: Api) -> dict[str, str]:
    return {"exception_id": (await api.ok("POST", "/pricing/decision", ESCALATING))["exception_id"]}


async def _experiment(api: Api) -> dict[str, str]:
    """A decision of experiment "fuzz", for its results to read (the route has no path parameters)."""
    await api.ok("POST", "/pricing/decision", {**QUOTE, "variant": "control", "experiment": "fuzz"})
    return {}


async def _blocked_ip(api: Api) -> dict[str, str]:
    api.blocks += 1  # TEST-NET-3, documentation addresses: blocked, never connected to
    ip = f"203.0.113.{api.blocks % 250 + 1}"
    await api.ok("POST", "/security/block-ip", {"ip": ip})
    return {"ip": ip}


async def _task(api: Api) -> dict[str, str]:
    """A pending task (review: critic, integrator), for the task routes to change, submit or cancel."""
    return {"task_id": (await api.ok("POST", "/tasks", {"title": "target", "type": "review", "start": False}))["id"]}


async def _escalation(api: Api) -> dict[str, str]:
    """A pending escalation (of a pending task), for a decision to use up."""
    task = await _task(api)
    esc = await api.ok("POST", "/escalations", {"task_id": task["task_id"], "reason": "target"})
    return {"esc_id": esc["escalation_id"]}


async def _role(api: Api) -> dict[str, str]:
    return {"role": "integrator"}  # no other route's example runs an integrator step


TASK = {"title": "fuzz", "type": "review", "description": "d", "priority": "low", "assignee_role": "critic",
        "files_to_modify": ["a.py"], "acceptance_criteria": ["works"], "dependencies": [], "tags": ["t"],
        "deadline": "2030-01-01T00:00:00Z", "metadata": {"k": 1}, "start": False}
# A key's own limits (issue 15), valid, for POST /keys and PATCH /keys/{key_id}.
KEY_LIMITS = {"max_budget": 5, "budget_duration": "30d", "models": ["k2p5", "team_coding"], "max_concurrency": 2,
              "limits": {"spawn": 10}, "expires_at": "2099-01-01T00:00:00Z", "metadata": {"owner": "fuzz"}}
EXAMPLES: dict[tuple[str, str], Example] = {
    ("POST", "/spawn"): Example(SPAWN),
    ("POST", "/spawn-team"): Example({"team": "team_coding", "task": "fuzz", "priority": "low", "timeout": 30,
                                      "privacy": {"retention_days": 1}}),
    ("POST", "/spawn-batch"): Example({"agents": [SPAWN]}),
    ("DELETE", "/agent/{agent_id}"): Example(None, ok=(409,), target=_agent),  # finished: nothing to cancel
    ("DELETE", "/agent/{agent_id}/data"): Example(None, target=_agent),
    ("POST", "/keys"): Example({"name": "fuzz", "scopes": ["agents:read", "billing:read"],
                                "require_signature": False, **KEY_LIMITS}, ok=(201,)),
    ("PATCH", "/keys/{key_id}"): Example(KEY_LIMITS, target=_key),
    # A project: a second valid create of one name is a 409 (names are unique), which changes nothing.
    ("POST", "/projects"): Example({"name": "fuzz project", "max_budget": 5, "budget_duration": "30d",
                                    "metadata": {"owner": "fuzz"}, "members": []}, ok=(201,)),
    ("PATCH", "/projects/{project_id}"): Example({"max_budget": 7, "budget_duration": "1d", "metadata": {"team": "x"},
                                                  "add_members": []}, target=_project),
    ("DELETE", "/projects/{project_id}"): Example(None, target=_project),
    ("DELETE", "/keys/{key_id}"): Example({"reason": "fuzz"}, target=_key),
    ("POST", "/keys/{key_id}/rotate"): Example(None, ok=(201,), target=_key),
    ("POST", "/keys/{key_id}/webhook-secret/rotate"): Example(None, target=_key),
    ("PUT", "/security/ip-whitelist"): Example({"allowed_ips": ["127.0.0.0/8", "::1"], "enforce": False,
                                                "log_violations": True}),
    ("POST", "/security/block-ip"): Example({"ip": "192.0.2.1", "reason": "fuzz", "duration_hours": 1},
                                            ok=(201,)),
    ("DELETE", "/security/block-ip/{ip}"): Example(None, target=_blocked_ip),
    ("POST", "/security/audit"): Example({"enabled": True, "log_level": "standard", "retention_days": 90,
                                          "include_request_body": False, "include_response_body": False,
                                          "events": ["agent.spawn", "config.change"]}),
    ("POST", "/webhooks"): Example(lambda api: api.hook_body(), ok=(201,)),
    ("PUT", "/webhooks/{webhook_id}"): Example({"status": "paused", "description": "fuzzed",
                                                "events": ["agent.failed"]}, target=_webhook),
    ("DELETE", "/webhooks/{webhook_id}"): Example(None, target=_webhook),
    ("POST", "/webhooks/{webhook_id}/test"): Example(None, ok=(202,), target=_webhook),
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): Example(None, ok=(202,),
                                                                                   target=_delivery),
    ("POST", "/pricing/quote"): Example(QUOTE),
    ("POST", "/pricing/batch-quotes"): Example({k: v for k, v in QUOTE.items() if k != "segment"}),
    ("POST", "/pricing/decision"): Example({**QUOTE, "approver": "fuzz", "variant": "test", "experiment": "e1"}),
    ("POST", "/pricing/scenario"): Example({"delivery_type": "task", "scenarios": [QUOTE]}),
    ("POST", "/pricing/portfolio-alert"): Example({"scenario_count": 4, "compliant_count": 3,
                                                   "average_margin_pct": 61.5}),
    ("POST", "/pricing/weekly-metrics"): Example({"quotes": DECISIONS}),
    ("POST", "/pricing/weekly-comparison"): Example({
        **{f"{w}_total_quotes": 10 for w in ("current", "prev")},
        **{f"{w}_approval_rate": 0.8 for w in ("current", "prev")},
        **{f"{w}_avg_margin_pct": 60.0 for w in ("current", "prev")},
        **{f"{w}_exceptions_created": 1 for w in ("current", "prev")}}),
    ("POST", "/pricing/experiment-summary"): Example({"quotes": VARIANTS}),
    ("POST", "/pricing/exception-alert"): Example({"open_exceptions": 3, "oldest_days": 4, "at_risk_count": 1}),
    ("POST", "/pricing/exceptions/{exception_id}/close"): Example({"resolution": "approved", "closed_by": "fuzz"},
                                                                  target=_exception),
    ("POST", "/pricing/webhook"): Example(lambda api: {"url": api.hook_url(), "events": ["pricing.quote_generated"],
                                                       "secret": "s" * 16}, ok=(201,)),
    ("DELETE", "/pricing/webhook/{webhook_id}"): Example(None, target=_pricing_webhook),
    ("POST", "/cache/invalidate"): Example({"cache": "pricing"}),
    ("POST", "/admin/reload"): Example(None),  # the embedded default here: a reload that changes nothing
    ("POST", "/orchestrator/recommend-model"): Example({"task_type": "code", "estimated_tokens": 2000,
                                                        "complexity": "high", "priority": "critical"}),
    ("POST", "/models/select"): Example({"task_type": "code", "estimated_tokens": 2000}),
    ("POST", "/orchestrator/experiment/results"): Example({"experiment_id": "fuzz", "days": 30}, target=_experiment),
    # Tasks (tests/test_tasks_api.py): the shared pending task of the Api takes the escalations.
    ("POST", "/tasks"): Example(TASK, ok=(201,)),
    ("PUT", "/tasks/{task_id}"): Example({"title": "fuzzed", "feedback": "ok", "results": {"n": 1}, "tags": ["u"]},
                                         target=_task),
    ("DELETE", "/tasks/{task_id}"): Example({"reason": "fuzz"}, target=_task),
    ("POST", "/tasks/{task_id}/submit"): Example({"role": "critic", "context": {"a": 1}, "preferences": {
        "model": "sonnet", "temperature": 0.5, "max_tokens": 100, "timeout": 60}}, target=_task),
    ("PUT", "/roles/{role}"): Example({"temperature": 0.5, "preferences": {"timeout": 100},
                                       "escalation_rules": {"cost_threshold": 1.0}}, target=_role),
    ("POST", "/escalations"): Example(lambda api: {"task_id": api.task_id, "reason": "fuzz", "target_model": "opus",
                                                   "context": {"a": 1}, "estimated_cost": 1.5, "priority": "high"},
                                      ok=(201,)),
    ("POST", "/escalations/{esc_id}/decision"): Example({"decision": "rejected", "reason": "fuzz",
                                                         "approver_comments": "no"}, target=_escalation),
    # Sunset routes: 410 with the successor, whatever is sent.
    ("POST", "/agent"): Example(None, ok=(410,)),
    ("DELETE", "/cancel"): Example(None, ok=(410,)),
}


# -- the client ------------------------------------------------------------------------------------

@dataclass
class Api:
    client: Any
    headers: dict[str, str]
    tmp: str
    blocks: int = 0
    hooks: int = 0
    task_id: str = ""  # a pending task, for POST /escalations (whose body names it)
    sent: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def services(self) -> Any:
        return self.client.app[SERVICES]

    def hook_url(self) -> str:
        """A file sink in this test's tmp dir: no network, whatever the webhook target policy."""
        self.hooks += 1
        return f"file://{self.tmp}/hook{self.hooks}.jsonl"

    def hook_body(self) -> dict[str, Any]:
        return {"url": self.hook_url(), "events": ["agent.completed", "webhook.test"], "description": "fuzz",
                "secret": "s" * 16, "sink": "file"}

    async def send(self, method: str, path: str, *, data: bytes | None = None,
                   params: dict[str, str] | None = None,
                   content_type: str = "application/json") -> tuple[int, Any, Any]:
        self.sent += 1
        headers = self.headers if data is None else {**self.headers, "Content-Type": content_type}
        async with self.client.request(method, "/api" + path, data=data, params=params, headers=headers) as resp:
            if resp.content_type == "text/event-stream":  # a live stream: its headers are the answer
                return resp.status, None, resp.headers
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw[:200]
            return resp.status, body, resp.headers

    async def ok(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        status, answer, _ = await self.send(method, path.format(**(params or {})),
                                            data=None if body is None else json.dumps(body).encode())
        assert status < 300, (method, path, status, answer)
        return answer

    async def quiet(self) -> None:
        """Wait until no agent is live and every queued write has committed."""
        for _ in range(1000):
            if not self.services.runtime.live:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"agents still live: {list(self.services.runtime.live)}")
        await self.services.store.flush()

    async def state(self) -> Any:
        """What a refused request must leave as it was."""
        await self.services.store.flush()

        def read(conn: Any) -> dict[str, Any]:
            # metric_points: the dashboard's series, written on the minute by a job (timeseries.py)
            # from what agents that ended before did, whatever request is in flight.
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                 "AND name NOT LIKE 'sqlite_%' AND name != 'metric_points' "
                                                 "ORDER BY name")]
            # One statement for every count (this runs after each refusal).  api.key.used is
            # written at most every few minutes per key, on any request.
            counts = [f"(SELECT COUNT(*) FROM {t})" for t in tables if t != "audit_log"]
            counts.append("(SELECT COUNT(*) FROM audit_log WHERE event != 'api.key.used')")
            out: dict[str, Any] = dict(zip([t for t in tables if t != "audit_log"] + ["audit_log"],
                                           conn.execute(f"SELECT {', '.join(counts)}").fetchone()))
            for name, sql in (
                    ("settings", "SELECT name, value FROM settings ORDER BY name"),
                    ("keys", "SELECT key_id, scopes, expires_at, revoked_at, rotated_to, webhook_secret"
                             " FROM api_keys ORDER BY 1"),
                    ("hooks", "SELECT webhook_id, url, events, status, description FROM webhooks ORDER BY 1"),
                    ("blocks", "SELECT * FROM ip_blocks ORDER BY 1"),
                    ("exceptions", "SELECT * FROM pricing_exceptions ORDER BY 1")):
                out[name] = [tuple(r) for r in conn.execute(sql)]
            return out

        budget = self.services.budget.snapshot()
        # The UTC day with the spend: at midnight today's spend starts again from nothing, which no
        # request did (a run across midnight saw "changed ['spend']" for a refusal).
        return {"db": await self.services.store.read(read), "live": sorted(self.services.runtime.live),
                "spend": (budget["today_spend"], budget["reserved"]), "day": time.strftime("%Y-%m-%d", time.gmtime())}


def envelope_problem(status: int, body: Any, headers: Any) -> str | None:
    """What is wrong with a refusal's body (None: it is the one error envelope)."""
    if not isinstance(body, dict) or body.get("success") is not False or not isinstance(body.get("error"), dict):
        return f"not the error envelope: {body!r:.200}"
    error = body["error"]
    if error.get("code") != status or not isinstance(error.get("type"), str) or not error["type"]:
        return f"code/type: {error!r:.300}"
    if not isinstance(error.get("message"), str) or not error["message"]:
        return f"no message: {error!r:.300}"
    if error.get("request_id") != headers.get("X-Request-Id"):
        return f"request_id {error.get('request_id')!r} is not the header's"
    if error["type"] == "VALIDATION_ERROR":
        details = error.get("details")
        if not isinstance(details, list) or not details or not all(
                isinstance(d, dict) and isinstance(d.get("field"), str) and isinstance(d.get("message"), str)
                for d in details):
            return f"VALIDATION_ERROR without field details: {error!r:.300}"
    return None


def names(error: dict[str, Any], field: str) -> bool:
    """Does a VALIDATION_ERROR name the broken field in its details (or the object or list it is
    in, or a part of it), or in its message (a rule between two fields: "at_risk_count must not
    exceed open_exceptions")?  Other 400s (BAD_REQUEST; INVALID_JSON, which names only "body") are not checked."""
    if error["type"] != "VALIDATION_ERROR":
        return True
    named = [d["field"] for d in error["details"]]
    return field in error["message"] or any(
        f == field or field.startswith((f + ".", f + "[")) or f.startswith((field + ".", field + "["))
        for f in named)


# Refusals that may name another field than the one sent (none today; each entry says why).
UNNAMED: set[tuple[str, str, str]] = set()  # (method, path, field) whose 400 may not name the field


# -- routes and fields, from the app ----------------------------------------------------------------

def router_routes(app: Any, methods: tuple[str, ...] = METHODS_WITH_BODY,
                  prefix: str = "/api") -> set[tuple[str, str]]:
    """(method, path below ``prefix``) of every route of the router with one of ``methods``.
    /api/v1 is the same table with the same handlers (routes.setup_routes mounts each route under
    both), so the fuzz covers /api only."""
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        below = path[len(prefix):]
        if route.method in methods and path.startswith(prefix + "/") and not below.startswith("/v1/"):
            found.add((route.method, below))
    return found


def documented(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path) -> the documented body schema."""
    return {(method.upper(), path[len("/api"):]): op["requestBody"]["content"]["application/json"]["schema"]
            for path, ops in doc["paths"].items() if path.startswith("/api/") and not path.startswith("/api/v1/")
            for method, op in ops.items() if "requestBody" in op}


Path = tuple[Any, ...]


def schema_fields(schema: dict[str, Any], prefix: Path = ()) -> list[Path]:
    out: list[Path] = []
    for name, sub in (schema.get("properties") or {}).items():
        out.append((*prefix, name))
        if sub.get("type") == "object":
            out += schema_fields(sub, (*prefix, name))
        items = sub.get("items")
        if sub.get("type") == "array" and isinstance(items, dict) and items.get("type") == "object":
            out += schema_fields(items, (*prefix, name, 0))
    return out


def example_fields(value: Any, prefix: Path = ()) -> list[Path]:
    out: list[Path] = []
    if isinstance(value, dict):
        for name, sub in value.items():
            out += [(*prefix, name), *example_fields(sub, (*prefix, name))]
    elif isinstance(value, list) and value:
        out += [(*prefix, 0), *example_fields(value[0], (*prefix, 0))]
    return out


def with_value(body: Any, path: Path, value: Any) -> Any:
    """A copy of ``body`` with ``value`` at ``path`` (missing objects on the way are made)."""
    out = copy.deepcopy(body)
    node = out
    for step in path[:-1]:
        if isinstance(node, dict) and not isinstance(node.get(step), (dict, list)):
            node[step] = {}
        node = node[step]
    node[path[-1]] = value
    return out


def dotted(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


# -- the fuzz --------------------------------------------------------------------------------------

@pytest.fixture
async def api(aiohttp_client, tmp_path) -> Api:
    cfg = auth_config(tmp_path)
    # Hundreds of valid spawns: no budget may refuse them (that would be a 402, not the example's 200).
    cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, daily_budget=10_000.0,
                                                              monthly_ceiling=300_000.0, spike_per_hour=10_000.0),
                              webhooks=dataclasses.replace(cfg.webhooks, file_sink_dirs=(str(tmp_path / "hooks"),)))
    client = await aiohttp_client(build_app(cfg))
    (tmp_path / "hooks").mkdir()
    api = Api(client, bearer(bootstrap_key(cfg)["token"]), str(tmp_path / "hooks"))
    api.task_id = (await _task(api))["task_id"]
    return api


class Run:
    """One route's requests, each checked, with its state compared after every refusal."""

    def __init__(self, api: Api, method: str, path: str, example: Example) -> None:
        self.api, self.method, self.path, self.example = api, method, path, example
        self.params: dict[str, str] = {}
        self.before: Any = None

    async def start(self) -> None:
        await self.refresh()

    async def refresh(self) -> None:
        """New path parameters (the last success may have used them up), and the state to keep."""
        await self.api.quiet()
        if self.example.target is not None:
            self.params = await self.example.target(self.api)
            await self.api.quiet()
        self.before = await self.api.state()

    async def send(self, data: bytes | None, what: str, field: str | None = None,
                   content_type: str = "application/json") -> int:
        """Send one request and check its answer; ``field``: the field this request broke."""
        api = self.api
        status, body, headers = await api.send(self.method, self.path.format(**self.params), data=data,
                                               content_type=content_type)
        label = f"{self.method} {self.path} {what}"
        if status >= 500:
            api.problems.append(f"{label}: {status} {body!r:.300}")
        elif status >= 400:
            problem = envelope_problem(status, body, headers)
            if problem:
                api.problems.append(f"{label}: {status} {problem}")
            elif field is not None and status == 400 and not names(body["error"], field) \
                    and (self.method, self.path, field) not in UNNAMED:
                api.problems.append(f"{label}: 400 does not name {field}: {body['error']!r:.300}")
            after = await api.state()
            if after["day"] != self.before["day"]:  # the day turned meanwhile: a new baseline
                await self.refresh()
            elif after != self.before:
                changed = [k for k in after["db"] if after["db"][k] != self.before["db"].get(k)]
                changed += [k for k in ("live", "spend") if after[k] != self.before[k]]
                api.problems.append(f"{label}: {status} but changed {changed}")
                await self.refresh()
        else:
            await self.refresh()
        return status


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _short(value: Any) -> str:
    return f"{value!r:.40}"


def top_level_fields(schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Every top-level field name of every example and documented body, and one nobody reads."""
    names = [k for e in EXAMPLES.values() if isinstance(e.body, dict) for k in e.body]
    names += [k for schema in schemas.values() for k in schema.get("properties") or ()]
    return list(dict.fromkeys([*names, "agents", "tasks", "webhook_url", "unknown"]))


async def fuzz_route(api: Api, method: str, path: str, example: Example, schema: dict[str, Any] | None,
                     foreign: list[str]) -> None:
    body = example.body(api) if callable(example.body) else example.body
    run = Run(api, method, path, example)
    await run.start()
    status = await run.send(None if body is None else _json(body), "valid example")
    if status not in example.ok:
        api.problems.append(f"{method} {path}: its valid example answered {status}, not {example.ok}")
        return
    if body is None:
        # Reads no body: whatever is sent, the answer is the valid one's.
        for value in VALUES:
            got = await run.send(_json(value), f"body {_short(value)}")
            if got != status:
                api.problems.append(f"{method} {path}: body {_short(value)} answered {got}, not {status}")
        return
    paths = list(dict.fromkeys(example_fields(body) + (schema_fields(schema) if schema else [])))
    for fpath in paths:
        for value in VALUES:
            await run.send(_json(with_value(body, fpath, value)), f"{dotted(fpath)}={_short(value)}",
                           dotted(fpath))
    if isinstance(body, dict):
        extra = [name for name in foreign if (name,) not in paths]
        for value in FOREIGN_VALUES:
            # All at once: a route reads none of them.  Refused: one of them is read after all (or
            # the route refuses unknown fields), so each one alone, lest that refusal hide a crash.
            status = await run.send(_json({**body, **dict.fromkeys(extra, value)}),
                                    f"+{len(extra)} foreign fields={_short(value)}")
            if 400 <= status < 500:
                for name in extra:
                    await run.send(_json({**body, name: value}), f"+{name}={_short(value)}")
    for value in VALUES:
        await run.send(_json(value), f"body={_short(value)}")
    for raw in RAW_BODIES:
        await run.send(raw, f"raw body {raw[:8]!r}")
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()} \
        if isinstance(body, dict) else {}
    # The pricing routes also take form fields (strings to convert); the others refuse a form whole.
    takes_forms = form and await run.send(urlencode(form).encode(), "form example", content_type=FORM) < 300
    if takes_forms:
        for name in form:
            for text in ODD_QUERY:
                await run.send(urlencode({**form, name: text}).encode(), f"form {name}={text!r:.40}",
                               content_type=FORM)
    if form:
        for ctype, raw in FORM_BODIES:
            await run.send(raw, f"{ctype} {raw[:20]!r}", content_type=ctype)


async def test_every_body_route_has_a_valid_example(api):
    app = api.client.app
    doc = await api.ok("GET", "/openapi.json")
    routes = router_routes(app)
    assert router_routes(app, prefix="/api/v1") == routes
    documented_bodies = documented(doc)
    assert set(documented_bodies) <= routes, set(documented_bodies) - routes
    missing = routes - set(EXAMPLES)
    assert not missing, f"body routes without a valid example in this file: {sorted(missing)}"
    assert not set(EXAMPLES) - routes, f"examples for routes that do not exist: {sorted(set(EXAMPLES) - routes)}"
    for key in documented_bodies:  # a documented body is read: the example must be one
        assert EXAMPLES[key].body is not None, key


async def test_every_field_of_every_body_with_every_json_type(api):
    doc = await api.ok("GET", "/openapi.json")
    schemas = documented(doc)
    for method, path in sorted(router_routes(api.client.app)):
        example = EXAMPLES.get((method, path))
        if example is None:
            api.problems.append(f"{method} {path}: no valid example")
            continue
        await fuzz_route(api, method, path, example, schemas.get((method, path)), top_level_fields(schemas))
    assert not api.problems, f"{len(api.problems)} of {api.sent} requests:\n" + "\n".join(api.problems[:80])


def _agents_filters() -> list[dict[str, str]]:
    """GET /agents: every filter field and operator with every JSON type, in ``filter`` and as a parameter."""
    from j1mskyd.agent_query import ALIASES, FIELDS, OPERATORS
    out = []
    for name in (*FIELDS, *ALIASES):
        for value in QUERY_VALUES:
            out.append({"filter": json.dumps({name: value})})
        for value in ODD_QUERY[:12]:
            out.append({name: value})
    for op in OPERATORS:
        for value in QUERY_VALUES:
            for name in ("cost", "model", "created_at", "task"):
                out.append({"filter": json.dumps({name: {op: value}})})
                out.append({"filter": json.dumps({f"{name}_{op}": value})})
    return out


async def test_every_get_route_with_odd_query_values_and_path_ids(api):
    doc = await api.ok("GET", "/openapi.json")
    documented_query: dict[str, list[str]] = {}
    for path, ops in doc["paths"].items():
        if "get" in ops and path.startswith("/api/") and not path.startswith("/api/v1/"):
            documented_query[path[len("/api"):]] = [p["name"] for p in ops["get"].get("parameters", ())
                                                    if p["in"] == "query"]
    webhook = await _webhook(api)
    names = {"webhook_id": webhook["webhook_id"], "agent_id": (await _agent(api))["agent_id"], "name": "k2p5",
             "key_id": (await _key(api))["key_id"], "project_id": (await _project(api))["project_id"],
             **await _task(api), **await _escalation(api), "role": "critic"}
    for _, path in sorted(router_routes(api.client.app, ("GET",))):
        if path == "/ws":
            continue  # a WebSocket: tests/test_events_live.py
        params = documented_query.get(path, [])
        queries = [{p: v} for p in [*params, "limit", "offset", "unknown"] for v in ODD_QUERY]
        if path == "/agents":
            queries += _agents_filters()
        for query in queries:
            status, body, headers = await api.send("GET", path.format(**names), params=query)
            label = f"GET {path}?{query!r:.80}"
            if status >= 500:
                api.problems.append(f"{label}: {status} {body!r:.300}")
            elif status >= 400 and body is not None:
                problem = envelope_problem(status, body, headers)
                if problem:
                    api.problems.append(f"{label}: {problem}")
        for name in ("webhook_id", "agent_id", "name", "delivery_id", "task_id", "esc_id", "role"):
            if "{" + name + "}" in path:
                for odd in ODD_PATH:
                    status, body, _ = await api.send("GET", path.format(**{**names, name: quote(odd, safe="")}))
                    if status >= 500:
                        api.problems.append(f"GET {path} {name}={odd!r:.40}: {status} {body!r:.300}")
    assert not api.problems, f"{len(api.problems)} of {api.sent} requests:\n" + "\n".join(api.problems[:80])


# -- the findings, one by one ----------------------------------------------------------------------

async def agent_count(api: Api) -> int:
    return await api.services.store.read(lambda c: c.execute("SELECT COUNT(*) FROM agents").fetchone()[0])


@pytest.mark.parametrize("value", [1, -1, 1.5, 1e308, HUGE, True, False, None])
async def test_a_scalar_agents_on_the_spawn_routes_is_never_a_500(api, value):
    # Found: {"agents": 1} was a 500 on all three spawn routes (the handler iterated it, looking
    # for webhook URLs, before anything was validated).
    for path, body in (("/spawn", SPAWN), ("/spawn-team", {"team": "team_coding", "task": "fuzz"})):
        status, answer, _ = await api.send("POST", path, data=_json({**body, "agents": value}))
        assert status == 200, answer  # a field these routes do not read
    await api.quiet()
    before = await agent_count(api)
    status, answer, headers = await api.send("POST", "/spawn-batch", data=_json({"agents": value}))
    assert status == 400 and envelope_problem(status, answer, headers) is None, answer
    assert [d["field"] for d in answer["error"]["details"]] == ["agents"]
    assert await agent_count(api) == before


@pytest.mark.parametrize("raw, field", [
    ('{"name": "a\\ud800", "scopes": ["agents:read"]}', "name"),
    ('{"name": "k", "scopes": ["agents:read"], "x": {"deep": ["ok", "\\uDFFF"]}}', "x.deep[1]"),
    ('{"\\ud800": 1, "name": "k", "scopes": ["agents:read"]}', "body"),
])
async def test_a_lone_surrogate_anywhere_in_a_body_is_a_400_naming_it(api, raw, field):
    # Found: "\ud800" (valid JSON, not Unicode text) in a key's name or revoke reason, a webhook's
    # description, a block's reason or a pricing decision's approver reached SQLite: a 500.
    before = await api.state()
    status, answer, headers = await api.send("POST", "/keys", data=raw.encode())
    assert status == 400 and envelope_problem(status, answer, headers) is None, answer
    assert answer["error"]["type"] == "VALIDATION_ERROR"
    assert answer["error"]["details"] == [{"field": field, "message": f"{field} must be valid Unicode text "
                                                                      "(no lone surrogates)"}]
    assert await api.state() == before
    # A surrogate pair is one real character (an emoji): accepted.
    status, answer, _ = await api.send("POST", "/keys", data=b'{"name": "\\ud83d\\ude80", "scopes": ["agents:read"]}')
    assert status == 201 and answer["name"] == "\U0001f680"


@pytest.mark.parametrize("value", [[], ["pricing"], {}, {"pricing": 1}])
async def test_cache_invalidate_refuses_a_cache_name_that_is_not_a_string(api, value):
    # Found: a list or object as "cache" was a 500 (unhashable, looked up in the caches).
    status, answer, headers = await api.send("POST", "/cache/invalidate", data=_json({"cache": value}))
    assert status == 400 and envelope_problem(status, answer, headers) is None, answer
    assert answer["error"]["details"][0]["field"] == "cache"
