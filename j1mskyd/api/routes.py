"""The route table, mounted under /api and its alias /api/v1.

Each route names the scope a key needs (docs/security.md has this table for operators)
and its rate-limit class (the seed's "Rate Limits" table).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from . import agents, dashboard, events, keys, openapi, ops, orchestrator, pricing, security, system, webhooks
from .middleware import IN_BAND_AUTH, PUBLIC, ROUTE_CLASSES, ROUTE_SCOPES

PREFIXES = ("/api", "/api/v1")
READ, WRITE, BILLING, ADMIN = "agents:read", "agents:write", "billing:read", "admin:write"

# method, path, handler, scope, rate-limit class
ROUTES = (
    ("POST", "/spawn", agents.spawn, WRITE, "spawn"),
    ("POST", "/spawn-team", agents.spawn_team, WRITE, "spawn"),
    ("POST", "/spawn-batch", agents.spawn_batch, WRITE, "spawn"),
    ("GET", "/agents", agents.list_agents, READ, "agents_list"),
    ("GET", "/agents/active", agents.active_agents, READ, "agents_list"),
    ("GET", "/agent/{agent_id}", agents.get_agent, READ, "agent_read"),
    ("DELETE", "/agent/{agent_id}", agents.cancel_agent, WRITE, "other"),
    ("DELETE", "/agent/{agent_id}/data", agents.delete_agent_data, WRITE, "other"),
    ("GET", "/health", system.health, PUBLIC, "other"),
    ("GET", "/openapi.json", openapi.openapi_json, PUBLIC, "other"),
    ("GET", "/plugins", system.plugins, READ, "other"),
    ("GET", "/rate-limits", ops.rate_limits, READ, "other"),
    ("GET", "/system", ops.system, READ, "system"),
    ("GET", "/metrics", ops.metrics_json, READ, "other"),
    ("GET", "/billing/usage", ops.billing_usage, BILLING, "other"),
    ("POST", "/keys", keys.create_key, ADMIN, "other"),
    ("GET", "/keys", keys.list_keys, ADMIN, "other"),
    ("DELETE", "/keys/{key_id}", keys.revoke_key, ADMIN, "other"),
    ("POST", "/keys/{key_id}/rotate", keys.rotate_key, ADMIN, "other"),
    ("POST", "/keys/{key_id}/webhook-secret/rotate", keys.rotate_webhook_secret, ADMIN, "other"),
    ("GET", "/security/ip-whitelist", security.get_ip_whitelist, ADMIN, "other"),
    ("PUT", "/security/ip-whitelist", security.put_ip_whitelist, ADMIN, "other"),
    ("POST", "/security/block-ip", security.block_ip, ADMIN, "other"),
    ("GET", "/security/blocked-ips", security.list_blocked_ips, ADMIN, "other"),
    ("DELETE", "/security/block-ip/{ip}", security.unblock_ip, ADMIN, "other"),
    ("POST", "/security/audit", security.configure_audit, ADMIN, "other"),
    ("GET", "/security/audit", security.audit_entries, ADMIN, "other"),
    ("POST", "/webhooks", webhooks.create_webhook, ADMIN, "other"),
    ("GET", "/webhooks", webhooks.list_webhooks, ADMIN, "other"),
    ("GET", "/webhooks/{webhook_id}", webhooks.get_webhook, ADMIN, "other"),
    ("PUT", "/webhooks/{webhook_id}", webhooks.update_webhook, ADMIN, "other"),
    ("DELETE", "/webhooks/{webhook_id}", webhooks.delete_webhook, ADMIN, "other"),
    ("POST", "/webhooks/{webhook_id}/test", webhooks.test_webhook, ADMIN, "other"),
    ("GET", "/webhooks/{webhook_id}/deliveries", webhooks.list_deliveries, ADMIN, "other"),
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", webhooks.redeliver, ADMIN, "other"),
    ("GET", "/events", events.list_events, READ, "other"),
    ("GET", "/events/stream", events.stream, READ, "other"),
    # WebSocket: a key in the upgrade's headers, or (browsers cannot send headers) in its
    # {"type":"auth"} message, checked by the same pipeline (IN_BAND_AUTH below).
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
    ("GET", "/models", orchestrator.list_models, READ, "other"),
    ("GET", "/models/{name}", orchestrator.get_model, READ, "other"),
    ("POST", "/models/select", orchestrator.select_model, WRITE, "other"),
)


def _add(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """A route; a GET route answers HEAD too (RFC 9110 9.3.2, as aiohttp's add_get does),
    with GET's scope and rate-limit class (middleware.Route looks HEAD up as GET)."""
    if method == "GET":
        app.router.add_get(path, handler)
    else:
        app.router.add_route(method, path, handler)


def setup_routes(app: web.Application) -> None:
    classes: dict[tuple[str, str], str] = {}
    scopes: dict[tuple[str, str], str] = {}
    for prefix in PREFIXES:
        for method, path, handler, scope, limit_class in ROUTES:
            _add(app, method, prefix + path, handler)
            classes[(method, prefix + path)] = limit_class
            scopes[(method, prefix + path)] = scope
        for (method, path), (new_method, successor) in system.SUNSET.items():
            _add(app, method, prefix + path, system.sunset_handler(new_method, successor))
            scopes[(method, prefix + path)] = PUBLIC  # a 410 pointing to the successor hides nothing
    app.router.add_get("/ws", events.websocket)  # the Kyros document's address
    classes[("GET", "/ws")], scopes[("GET", "/ws")] = "other", READ
    app[IN_BAND_AUTH] = frozenset(("GET", prefix + "/ws") for prefix in ("", *PREFIXES))
    # Prometheus scrapes the root; it can send a bearer token (authorization: in scrape_config).
    app.router.add_get("/metrics", ops.metrics_prometheus)
    scopes[("GET", "/metrics")] = READ
    # The dashboard (docs/dashboard.md): the page is public, its data needs a key.
    dashboard.assets()  # read the files now: a missing one fails the start, not a visitor
    app.router.add_get("/", dashboard.index)
    app.router.add_get("/static/{name}", dashboard.static)
    scopes[("GET", "/")] = scopes[("GET", "/static/{name}")] = PUBLIC  # HEAD follows GET (middleware.Route)
    openapi.describe(app, ROUTES, PREFIXES)
    app[ROUTE_CLASSES] = classes
    app[ROUTE_SCOPES] = scopes
