"""The route table, mounted under /api and its alias /api/v1; and the OpenAI/Anthropic front
door at /v1, where those SDKs look (docs/openai-compatible.md).

Each route names the scope a key needs, or PUBLIC (docs/security.md has this table for
operators), and its rate-limit class (the API reference's "Rate Limits" table); a front-door route
also its dialect, which renders its errors.  Deny by default: a route added without a
scope stops setup_routes (route_table.RouteTable).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..dialects.anthropic_messages import DIALECT as ANTHROPIC
from ..dialects.openai_chat import OPENAI
from ..keys import ANY_KEY, READ_ALL
from . import (agents, dashboard, events, frontdoor, frontdoor_anthropic, keys, openapi_route, ops, orchestrator,
               pricing, projects, security, system, tasks, webhooks)
from .kyros import routes as kyros
from .route_index import index_plain_paths
from .route_table import PUBLIC, ROUTE_TABLE, RouteTable

__all__ = ["FRONT_DOOR", "PREFIXES", "ROUTES", "setup_routes"]

PREFIXES = ("/api", "/api/v1")
READ, WRITE, BILLING, ADMIN = "agents:read", "agents:write", "billing:read", "admin:write"
ADMIN_READ = "admin:read"  # the admin reads: every key's records, no writes (admin:write implies it)

# method, path, handler, scope, rate-limit class
ROUTES = (
    ("POST", "/spawn", agents.spawn, WRITE, "spawn"),
    ("POST", "/spawn-team", agents.spawn_team, WRITE, "spawn"),
    ("POST", "/spawn-batch", agents.spawn_batch, WRITE, "spawn"),
    ("GET", "/agents", agents.list_agents, READ, "agents_list"),
    ("GET", "/agents/active", agents.active_agents, READ, "agents_list"),
    ("GET", "/agent/{agent_id}", agents.get_agent, READ, "agent_read"),
    ("GET", "/agent/{agent_id}/deliveries", agents.agent_deliveries, READ, "agent_read"),
    ("DELETE", "/agent/{agent_id}", agents.cancel_agent, WRITE, "other"),
    ("DELETE", "/agent/{agent_id}/data", agents.delete_agent_data, WRITE, "other"),
    ("GET", "/health", system.health, PUBLIC, "other"),
    ("GET", "/openapi.json", openapi_route.openapi_json, PUBLIC, "other"),
    ("GET", "/plugins", system.plugins, READ, "other"),
    ("GET", "/rate-limits", ops.rate_limits, READ, "other"),
    ("GET", "/system", ops.system, READ, "system"),
    ("GET", "/metrics", ops.metrics_json, READ, "other"),
    # Everyone's spend and agents, rolled up: a reader of every key's work.
    ("GET", "/metrics/timeseries", ops.metrics_timeseries, ADMIN_READ, "other"),
    ("GET", "/billing/usage", ops.billing_usage, BILLING, "other"),
    # Projects: a member key may read its own project (ANY_KEY, checked by the service).
    ("POST", "/projects", projects.create_project, ADMIN, "other"),
    ("GET", "/projects", projects.list_projects, READ_ALL, "other"),
    ("GET", "/projects/{project_id}", projects.get_project, ANY_KEY, "other"),
    ("PATCH", "/projects/{project_id}", projects.update_project, ADMIN, "other"),
    ("DELETE", "/projects/{project_id}", projects.delete_project, ADMIN, "other"),
    ("POST", "/keys", keys.create_key, ADMIN, "other"),
    ("GET", "/keys", keys.list_keys, ADMIN_READ, "other"),
    # A key's own record (its limits and budget); /keys/me before /keys/{key_id}, which shows
    # a key its own id only, unless it has admin:read (the handler answers 404 otherwise).
    ("GET", "/keys/me", keys.get_own_key, ANY_KEY, "other"),
    ("GET", "/keys/{key_id}", keys.get_key, ANY_KEY, "other"),
    ("PATCH", "/keys/{key_id}", keys.update_key, ADMIN, "other"),
    ("DELETE", "/keys/{key_id}", keys.revoke_key, ADMIN, "other"),
    ("POST", "/keys/{key_id}/rotate", keys.rotate_key, ADMIN, "other"),
    ("POST", "/keys/{key_id}/webhook-secret/rotate", keys.rotate_webhook_secret, ADMIN, "other"),
    ("GET", "/security/ip-whitelist", security.get_ip_whitelist, ADMIN_READ, "other"),
    ("PUT", "/security/ip-whitelist", security.put_ip_whitelist, ADMIN, "other"),
    ("POST", "/security/block-ip", security.block_ip, ADMIN, "other"),
    ("GET", "/security/blocked-ips", security.list_blocked_ips, ADMIN_READ, "other"),
    ("DELETE", "/security/block-ip/{ip}", security.unblock_ip, ADMIN, "other"),
    ("POST", "/security/audit", security.configure_audit, ADMIN, "other"),
    ("GET", "/security/audit", security.audit_entries, ADMIN_READ, "other"),
    # A key's own webhooks (webhooks.py: another key's id is a 404; admin:read sees all).
    ("POST", "/webhooks", webhooks.create_webhook, WRITE, "other"),
    ("GET", "/webhooks", webhooks.list_webhooks, READ, "other"),
    ("GET", "/webhooks/{webhook_id}", webhooks.get_webhook, READ, "other"),
    ("PUT", "/webhooks/{webhook_id}", webhooks.update_webhook, WRITE, "other"),
    ("DELETE", "/webhooks/{webhook_id}", webhooks.delete_webhook, WRITE, "other"),
    ("POST", "/webhooks/{webhook_id}/test", webhooks.test_webhook, WRITE, "other"),
    ("GET", "/webhooks/{webhook_id}/deliveries", webhooks.list_deliveries, READ, "other"),
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", webhooks.redeliver, WRITE, "other"),
    ("GET", "/events", events.list_events, READ, "other"),
    ("GET", "/events/stream", events.stream, READ, "other"),
    # WebSocket: a key in the upgrade's headers, or (browsers cannot send headers) in its
    # {"type":"auth"} message, checked by the same pipeline (in_band below).
    ("GET", "/ws", events.websocket, READ, "other"),
    ("POST", "/pricing/quote", pricing.pricing_quote, WRITE, "other"),
    ("POST", "/pricing/batch-quotes", pricing.pricing_batch_quotes, WRITE, "other"),
    ("POST", "/pricing/decision", pricing.pricing_decision, WRITE, "other"),
    ("POST", "/pricing/scenario", pricing.pricing_scenario, WRITE, "other"),
    ("POST", "/pricing/portfolio-alert", pricing.pricing_portfolio_alert, WRITE, "other"),
    ("POST", "/pricing/weekly-metrics", pricing.pricing_weekly_metrics, WRITE, "other"),
    ("POST", "/pricing/weekly-comparison", pricing.pricing_weekly_comparison, WRITE, "other"),
    ("POST", "/pricing/experiment-summary", pricing.pricing_experiment_summary, WRITE, "other"),
    ("POST", "/pricing/exception-alert", pricing.pricing_exception_alert, WRITE, "other"),
    ("GET", "/pricing/weekly-metrics", pricing.pricing_weekly_metrics_history, BILLING, "other"),
    ("GET", "/pricing/weekly-comparison", pricing.pricing_weekly_comparison_history, BILLING, "other"),
    ("GET", "/pricing/experiment-summary", pricing.pricing_experiment_summary_history, BILLING, "other"),
    ("GET", "/pricing/exception-alert", pricing.pricing_exception_alert_history, BILLING, "other"),
    ("GET", "/pricing/exceptions", pricing.pricing_exceptions, BILLING, "other"),
    ("POST", "/pricing/exceptions/{exception_id}/close", pricing.pricing_close_exception, WRITE, "other"),
    ("GET", "/pricing/status", pricing.pricing_status, BILLING, "other"),
    ("GET", "/pricing/health", pricing.pricing_health, BILLING, "other"),
    ("GET", "/pricing/report", pricing.pricing_report, BILLING, "other"),
    ("POST", "/pricing/webhook", pricing.pricing_create_webhook, ADMIN, "other"),
    ("GET", "/pricing/webhooks", pricing.pricing_list_webhooks, ADMIN, "other"),
    ("DELETE", "/pricing/webhook/{webhook_id}", pricing.pricing_delete_webhook, ADMIN, "other"),
    ("GET", "/orchestrator/status", orchestrator.orchestrator_status, BILLING, "other"),
    ("GET", "/cache/status", orchestrator.cache_status, READ, "other"),
    ("POST", "/cache/invalidate", orchestrator.cache_invalidate, ADMIN, "other"),
    ("POST", "/orchestrator/recommend-model", orchestrator.recommend_model, WRITE, "other"),
    # The cookbook's A/B analysis (Recipe 5): a read of the recorded pricing decisions.
    ("POST", "/orchestrator/experiment/results", orchestrator.experiment_results, BILLING, "other"),
    ("GET", "/models", orchestrator.list_models, READ, "other"),
    ("GET", "/models/{name}", orchestrator.get_model, READ, "other"),
    ("POST", "/models/select", orchestrator.select_model, WRITE, "other"),
    # Tasks (docs/tasks.md): a key's own tasks and escalations (another key's id is a 404);
    # changing a role and deciding an escalation are an admin's.  /tasks/costs before /tasks/{task_id}.
    ("POST", "/tasks", tasks.create_task, WRITE, "other"),
    ("GET", "/tasks", tasks.list_tasks, READ, "other"),
    ("GET", "/tasks/costs", tasks.task_costs, BILLING, "other"),
    ("GET", "/tasks/{task_id}", tasks.get_task, READ, "other"),
    ("PUT", "/tasks/{task_id}", tasks.update_task, WRITE, "other"),
    ("DELETE", "/tasks/{task_id}", tasks.cancel_task, WRITE, "other"),
    ("POST", "/tasks/{task_id}/submit", tasks.submit_task, WRITE, "other"),
    ("GET", "/roles", tasks.list_roles, READ, "other"),
    ("GET", "/roles/{role}", tasks.get_role, READ, "other"),
    ("PUT", "/roles/{role}", tasks.update_role, ADMIN, "other"),
    ("GET", "/roles/{role}/status", tasks.role_status, READ, "other"),
    ("GET", "/workflows", tasks.list_workflows, READ, "other"),
    ("POST", "/escalations", tasks.submit_escalation, WRITE, "other"),
    ("GET", "/escalations", tasks.list_escalations, READ, "other"),
    ("GET", "/escalations/{esc_id}", tasks.get_escalation, READ, "other"),
    ("POST", "/escalations/{esc_id}/decision", tasks.decide_escalation, ADMIN, "other"),
    # Re-read the config file without a restart, as SIGHUP does (reload.py).
    ("POST", "/admin/reload", ops.reload_config, ADMIN, "other"),
)

# The front door: method, path, handler, scope, rate-limit class, dialect.  A call is a spawn
# (agents:write, class spawn); the model list is a read.
FRONT_DOOR = (
    ("POST", "/v1/chat/completions", frontdoor.chat_handler(OPENAI), WRITE, "spawn", OPENAI),
    ("GET", "/v1/models", frontdoor.list_models, READ, "other", OPENAI),
    ("GET", "/v1/models/{name}", frontdoor.get_model, READ, "other", OPENAI),
    ("POST", "/v1/messages", frontdoor.chat_handler(ANTHROPIC), WRITE, "spawn", ANTHROPIC),
    # An estimate, no call: the key that sends the messages counts them (class other: nothing is spawned).
    ("POST", "/v1/messages/count_tokens", frontdoor_anthropic.count_tokens, WRITE, "other", ANTHROPIC),
)

# At the root, in a format of their own: method, path, handler, scope, content type.  Prometheus
# scrapes /metrics; it can send a bearer token (authorization: in scrape_config).
ROOT = (
    ("GET", "/metrics", ops.metrics_prometheus, READ, "text/plain"),
)


def setup_routes(app: web.Application) -> None:
    """Every route through one RouteTable, each with its scope (or PUBLIC) where it is added;
    an app whose router holds a route without one is refused (RouteTable.check_complete)."""
    table = RouteTable(app)
    for prefix in PREFIXES:
        for method, path, handler, scope, limit_class in ROUTES:
            table.add(method, prefix + path, handler, scope, limit_class, in_band=path == "/ws")
        for (method, path), (new_method, successor) in system.SUNSET.items():
            # A 410 pointing to the successor hides nothing.
            table.add(method, prefix + path, system.sunset_handler(new_method, successor), PUBLIC)
    table.add("GET", "/ws", events.websocket, READ, in_band=True)  # the Kyros document's address
    # Prometheus scrapes the root; it can send a bearer token (authorization: in scrape_config).
    for method, path, handler, scope, _ in ROOT:
        table.add(method, path, handler, scope)
    # The dashboard (docs/dashboard.md): the page is public, its data needs a key.
    dashboard.check_assets()  # a missing file fails the start, not a visitor
    table.add("GET", "/", dashboard.index, PUBLIC)
    table.add("GET", "/static/{name}", dashboard.static, PUBLIC)
    for door in FRONT_DOOR:
        table.add(*door[:5], dialect=door[5])
    # Kyros (the Kyros document's API) under /kyros/v1, in its own envelope (api/kyros, docs/kyros.md).
    table.envelope(kyros.MOUNT, kyros.ENVELOPE)
    kyros_routes = kyros.all_routes(ROUTES)
    for route in kyros_routes:
        table.add(route[0], kyros.PREFIX + route[1], *route[2:], in_band=route[1] == kyros.WS_PATH)
    table.check_complete()
    index_plain_paths(app.router)  # aiohttp 3.8 (bookworm): no scan of every resource per request
    openapi_route.describe(app, ROUTES, PREFIXES, FRONT_DOOR, ROOT, ((kyros.PREFIX, kyros_routes, _kyros_paths),))
    app[ROUTE_TABLE] = table


def _kyros_paths(*args: Any) -> dict[str, dict[str, Any]]:
    """api/kyros/openapi.py's paths, that module imported with the document's builder (on the
    first GET /openapi.json), not at start-up."""
    from .kyros import openapi as kyros_openapi
    return kyros_openapi.paths(*args)
