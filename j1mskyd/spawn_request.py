"""Spawn bodies read into typed requests: POST /spawn, /spawn-team and /spawn-batch.

The handlers (j1mskyd/api/agents.py) parse a body with :class:`SpawnParser` and hand the
result to AgentService, which no longer sees raw JSON.  Every broken rule of a body (of
every item of a batch) is reported at once, in the one error envelope (400 VALIDATION_ERROR
with ``details``), with the field names and messages the API has always used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from .agent_record import PRIORITIES, Priority
from .config import Config, TeamConfig
from .errors import ValidationFailed
from .jsonx import is_unicode

__all__ = ["SpawnParser", "SpawnRequest", "TeamRequest", "batch_items"]

TIMEOUT_MIN = 1.0
Errors = list[dict[str, str]]


@dataclass(frozen=True, kw_only=True)
class _Spawn:
    """What every spawn request holds, checked against the config (limits on task and timeout)."""

    task: str
    priority: Priority = "normal"
    timeout: float = 300.0
    retention_days: float | None = None
    webhook_url: str | None = None  # an http(s) URL; its target policy is checked by the service


@dataclass(frozen=True, kw_only=True)
class SpawnRequest(_Spawn):
    """One agent to spawn, on a configured model."""

    model: str


@dataclass(frozen=True, kw_only=True)
class TeamRequest(_Spawn):
    """A team to spawn: the configured team; every member gets the same task."""

    team: TeamConfig


_R = TypeVar("_R", "SpawnRequest", "TeamRequest")


def _built(cls: type[_R], **values: Any) -> _R:
    """``cls(**values)`` with every field given.  The frozen dataclass's own __init__ sets
    each field through object.__setattr__: ~14,000 instructions for a SpawnRequest, on every
    spawn; filling the new instance's __dict__ at once makes the same object in ~3,000
    (tests/test_spawn_request.py compares the two)."""
    request = object.__new__(cls)
    request.__dict__.update(values)
    return request


def batch_items(body: Any) -> Any:
    """What a spawn-batch body holds as its spawn requests: the body itself when it is a list,
    else its ``agents`` (or ``tasks``) member, whatever JSON that is; None for any other body.
    The caller checks that it is a list."""
    if isinstance(body, list):
        return body
    return body.get("agents", body.get("tasks")) if isinstance(body, dict) else None


class SpawnParser:
    def __init__(self, config: Config) -> None:
        self.config = config

    def spawn(self, body: Any) -> SpawnRequest:
        _require_object(body)
        errors: Errors = []
        req = self._agent(body, "", errors)
        if req is None:
            raise ValidationFailed(errors)
        return req

    def batch(self, body: Any) -> list[SpawnRequest]:
        """All or nothing: a batch with one bad entry is refused whole, every entry's problems named."""
        items = batch_items(body)
        if not isinstance(items, list) or not items:
            raise ValidationFailed([{"field": "agents", "message": "agents must be a non-empty list of spawn requests"}])
        limit = self.config.runtime.max_batch
        if len(items) > limit:
            raise ValidationFailed([{"field": "agents", "message": f"A batch holds at most {limit} agents"}])
        errors: Errors = []
        reqs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                errors.append({"field": f"agents[{i}]", "message": "Each agent must be a JSON object"})
                continue
            item_errors: Errors = []
            req = self._agent(item, f"agents[{i}].", item_errors)
            errors.extend(item_errors)
            if req is not None:
                reqs.append(req)
        if errors:
            raise ValidationFailed(errors)
        return reqs

    def team(self, body: Any) -> TeamRequest:
        _require_object(body)
        errors: Errors = []
        task, priority, timeout = self._common(body, "", errors)
        retention = _privacy(body, "", errors)
        url = _webhook_url(body, "", errors)
        team_id = body.get("team")
        team = self.config.teams.get(team_id) if isinstance(team_id, str) else None
        if team is None:
            errors.append({"field": "team", "message": f"Unknown team. Must be one of: {', '.join(self.config.teams)}"})
        if errors or team is None:
            raise ValidationFailed(errors)
        return _built(TeamRequest, team=team, task=task, priority=priority, timeout=float(timeout),
                      retention_days=retention, webhook_url=url)

    def _agent(self, body: dict[str, Any], prefix: str, errors: Errors) -> SpawnRequest | None:
        task, priority, timeout = self._common(body, prefix, errors)
        model = self._model(body, prefix, errors)
        retention = _privacy(body, prefix, errors)
        url = _webhook_url(body, prefix, errors)
        if errors:
            return None
        return _built(SpawnRequest, model=model, task=task, priority=priority, timeout=float(timeout),
                      retention_days=retention, webhook_url=url)

    def _common(self, body: dict[str, Any], prefix: str, errors: Errors) -> tuple[Any, Any, Any]:
        rt = self.config.runtime
        task = body.get("task")
        if task is None or (isinstance(task, str) and not task.strip()):
            errors.append({"field": prefix + "task", "message": "Task cannot be empty"})
        elif not isinstance(task, str):
            errors.append({"field": prefix + "task", "message": "Task must be a string"})
        elif len(task) > rt.max_task_chars:
            errors.append({"field": prefix + "task",
                           "message": f"Task exceeds maximum length of {rt.max_task_chars} characters"})
        elif not is_unicode(task):
            errors.append({"field": prefix + "task", "message": "Task must be valid Unicode text (no lone surrogates)"})
        priority = body.get("priority", "normal")
        if not isinstance(priority, str) or priority not in PRIORITIES:  # a list/dict is unhashable
            errors.append({"field": prefix + "priority", "message": "Priority must be one of: low, normal, high"})
        timeout = body.get("timeout", rt.default_timeout)
        # bool is an int, and a huge JSON int overflows math.isfinite: compare, never convert first.
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not TIMEOUT_MIN <= timeout <= rt.max_timeout:
            errors.append({"field": prefix + "timeout", "message":
                           f"Timeout must be a number of seconds between {TIMEOUT_MIN:g} and {rt.max_timeout:g}"})
        return task, priority, timeout

    def _model(self, body: dict[str, Any], prefix: str, errors: Errors) -> Any:
        model = body.get("model")
        if not isinstance(model, str) or model not in self.config.models:  # a list/dict is unhashable
            allowed = ", ".join(self.config.models)
            shown = "" if model is None else f" {model[:64]!r}" if isinstance(model, str) else " (not a string)"
            errors.append({"field": prefix + "model", "message": f"Invalid model{shown}. Must be one of: {allowed}"})
        return model


def _require_object(body: Any, what: str = "Request body") -> None:
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": f"{what} must be a JSON object"}])


def _privacy(body: dict[str, Any], prefix: str, errors: Errors) -> float | None:
    """The per-spawn ``privacy`` object; only retention_days changes what is stored (text is
    always encrypted at rest and PII always masked in logs when configured)."""
    privacy = body.get("privacy")
    if privacy is None:
        return None
    if not isinstance(privacy, dict):
        errors.append({"field": prefix + "privacy", "message": "privacy must be an object"})
        return None
    for flag in ("detect_pii", "mask_pii_in_logs", "encrypt_output"):
        if flag in privacy and not isinstance(privacy[flag], bool):
            errors.append({"field": f"{prefix}privacy.{flag}", "message": f"{flag} must be true or false"})
    days = privacy.get("retention_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float))
                             or not 0 < days <= 3650):
        errors.append({"field": prefix + "privacy.retention_days",
                       "message": "retention_days must be a number of days, more than 0 and at most 3650"})
        return None
    return None if days is None else float(days)


def _webhook_url(body: dict[str, Any], prefix: str, errors: Errors) -> str | None:
    url = body.get("webhook_url")
    # http(s) only: a file:// sink writes local files, which is for admin-made webhooks.
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))
                            or len(url) > 2000):
        errors.append({"field": prefix + "webhook_url", "message": "webhook_url must be an http(s):// URL"})
        return None
    return url
