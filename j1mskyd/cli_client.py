"""Client commands of the ``j1mskyd`` CLI: spawn, agents, agent, cancel, status.

They talk to a running daemon through the SDK (the ``j1msky`` package, shipped with the
daemon).  The address and key come from ``--api``/``--key`` or, as in the API reference's
quick start, ``J1MSKY_API`` and ``J1MSKY_KEY`` (and ``J1MSKY_SECRET`` to sign): the SDK's
own defaults.  Output is for people by default and
JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from .plain_text import shown

__all__ = ["add_commands", "cmd_agent", "cmd_agents", "cmd_cancel", "cmd_spawn", "cmd_status"]

# The client is imported when a client command runs (no need for it while parsing arguments).


def _client(args: argparse.Namespace, **options: Any) -> Any:
    from j1msky import J1MSKYClient
    # None: the SDK reads J1MSKY_API / J1MSKY_KEY / J1MSKY_SECRET, else localhost:8080 without a key.
    return J1MSKYClient(api_key=args.key or None, base_url=args.api or None, timeout=args.timeout, **options)


def _out(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


def _money(value: Any) -> str:
    return "-" if value is None else f"${value:.6f}".rstrip("0").rstrip(".")


def _default_model(client: Any) -> str:
    """The daemon's default model for this key (``GET /models``: ``default_model``), so that
    ``spawn`` without ``--model`` works whatever the catalogue is called."""
    model = client.request("GET", "/models").get("data", {}).get("default_model")
    if not model:
        from j1msky import J1MSKYError
        raise J1MSKYError("the daemon offers this key no model: give --model")
    return str(model)


def cmd_spawn(args: argparse.Namespace) -> int:
    client = _client(args)
    model = args.model or _default_model(client)
    agent = client.spawn(model=model, task=args.task, priority=args.priority,
                         **({"timeout": args.agent_timeout} if args.agent_timeout is not None else {}))
    if not args.wait:
        estimated = _money(agent.data.get("estimated_cost"))
        _out(args, agent.data, f"{agent.agent_id}  {model}  spawning  (estimated {estimated})")
        return 0
    try:
        return _wait(args, client, agent.agent_id)
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not the agent: say so, and how to follow it (no traceback).
        print(f"\nj1mskyd: stopped waiting; agent {agent.agent_id} keeps running on the daemon.\n"
              f"  follow it:  j1mskyd agent {agent.agent_id}\n"
              f"  cancel it:  j1mskyd cancel {agent.agent_id}", file=sys.stderr)
        return 130


def _wait(args: argparse.Namespace, client: Any, agent_id: str) -> int:
    """Poll until the agent ends, a progress line on stderr; print its answer."""
    started = time.monotonic()
    last = ""
    while True:
        data = client.get_agent_status(agent_id)
        status = data.get("status", "")
        if not args.json:  # a progress line on stderr; stdout keeps only the answer
            line = f"\r{agent_id}  {status:<10} {time.monotonic() - started:6.1f}s"
            if line != last:
                print(line, end="", file=sys.stderr, flush=True)
                last = line
        if status in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.5)
    if not args.json:
        print(file=sys.stderr)
    _out(args, data, shown(data.get("result") or data.get("error") or status, lines=True))
    return 0 if status == "completed" else 1


def cmd_agents(args: argparse.Namespace) -> int:
    params = {"status": args.status, "model": args.model, "limit": args.limit, "sort": "-created_at"}
    page = _client(args).list_agents(**params)
    lines = [f"{a['agent_id']}  {shown(a['model']):<13} {shown(a['status']):<10} "
             f"{_money(a.get('actual_cost')):>12}  {shown((a.get('task') or '')[:50])}" for a in page["data"]]
    total = page["pagination"]["total"]
    _out(args, page, "\n".join(lines + [f"({len(lines)} of {total})"]))
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    data = _client(args).get_agent_status(args.agent_id)
    # What the API holds is printed with its control and bidi characters escaped: a task's
    # ESC sequences would otherwise run in the reader's terminal (plain_text).
    human = "\n".join(f"{k:<15} {shown(v)}" for k, v in data.items() if v is not None and k != "result")
    if data.get("result"):
        human += f"\n\n{shown(data['result'], lines=True)}"
    _out(args, data, human)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    data = _client(args).cancel(args.agent_id)
    _out(args, data, f"cancelled {args.agent_id} (refund {_money(data.get('refund'))})")
    return 0


# A circuit breaker's states, as a newcomer reads them: "closed" read as "down".
_BREAKER_WORDS = {"closed": "ok", "open": "failing (calls paused)", "half_open": "recovering (testing one call)"}


def cmd_status(args: argparse.Namespace) -> int:
    from j1msky import J1MSKYError
    client = _client(args)
    try:
        health = _client(args, max_retries=0).request("GET", "/health")
    except J1MSKYError as exc:  # 503 is an unhealthy daemon's answer, with its reasons: show them
        body = exc.body
        if exc.status != 503 or not isinstance(body, dict) or "status" not in body:
            raise
        health = body
    limits = client.request("GET", "/rate-limits")
    budget = limits.get("budget", {})
    data = {"health": health, "rate_limits": limits}
    providers = ", ".join(f"{name} {_BREAKER_WORDS.get(p['state'], p['state'])}"
                          for name, p in health.get("providers", {}).items())
    human = (f"daemon      {health['status']} (version {health.get('version')}, up {health.get('uptime_seconds')} s)\n"
             f"agents      {health['agents']['running']} running, {health['agents']['queued']} queued\n"
             f"budget      {_money(budget.get('today_spend'))} of {_money(budget.get('daily_budget'))} today "
             f"({budget.get('budget_alert_level')})\n"
             f"providers   {providers}")
    reasons = health.get("reasons") or []
    if reasons:
        human += "\n" + "\n".join(f"reason      {shown(r)}" for r in reasons)
    _out(args, data, human)
    return 0 if health["status"] != "unhealthy" else 1


def add_commands(sub: Any) -> None:
    def parser(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--api", help="API base URL (default $J1MSKY_API or http://localhost:8080/api)")
        p.add_argument("--key", help="API key (default $J1MSKY_KEY)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds per HTTP request")
        p.set_defaults(func=_guarded(func))
        return p

    spawn = parser("spawn", "spawn an agent on a running daemon", cmd_spawn)
    spawn.add_argument("task")
    spawn.add_argument("--model", help="a model alias (default: the daemon's default model, GET /models)")
    spawn.add_argument("--priority", default="normal", choices=("low", "normal", "high"))
    # Not checked here: 0 or 4000 is sent, and the daemon's 400 says what it takes (it was dropped).
    spawn.add_argument("--agent-timeout", type=_finite, help="the agent's own timeout in seconds")
    spawn.add_argument("--wait", action="store_true", help="wait for the result, showing progress")
    agents = parser("agents", "list agents", cmd_agents)
    agents.add_argument("--status")
    agents.add_argument("--model")
    agents.add_argument("--limit", type=int, default=20)
    agent = parser("agent", "show one agent", cmd_agent)
    agent.add_argument("agent_id")
    cancel = parser("cancel", "cancel an agent", cmd_cancel)
    cancel.add_argument("agent_id")
    parser("status", "daemon health, agents, budget and providers", cmd_status)


def _finite(text: str) -> float:
    value = float(text)  # argparse turns the ValueError into "invalid _finite value"
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _seconds(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from j1msky import J1MSKYError
        try:
            return func(args)
        except J1MSKYError as exc:
            print(f"j1mskyd: {exc}", file=sys.stderr)
            return 1
    return run
