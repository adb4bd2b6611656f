"""What the client returns: the daemon's JSON objects, with their fields as attributes.

Each is a ``dict`` (``dict(result)``, ``result["cost"]``, ``json.dumps(result)`` all work,
and a field this SDK does not know is still there: ``result.some_new_field``), plus the
names the API reference's SDK examples use (``agent.id``, ``result.output``,
``status.state``, ``quote.internal_cost``, ``quote.guardrail_check.is_compliant``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AgentResult", "AgentStatus", "Quote", "Record", "wrap"]


def wrap(value: Any) -> Any:
    """JSON objects (also inside lists) as Records; other values as they are."""
    if isinstance(value, dict) and not isinstance(value, Record):
        return Record(value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


class Record(dict[str, Any]):
    """A JSON object whose fields are also attributes (nested objects are Records too)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        try:
            return wrap(self[name])
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r} (it has: {', '.join(self)})") from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self if k.isidentifier()})


class _AgentFields(Record):
    @property
    def agent_id(self) -> str:
        return str(self.get("agent_id") or "")

    @property
    def id(self) -> str:  # the API reference's SDK name (agent.id)
        return self.agent_id


class AgentStatus(_AgentFields):
    """``GET /agent/{id}``: ``state`` (= the API's ``status``), ``output`` (= ``result``), ``cost``."""

    @property
    def state(self) -> str:
        return str(self.get("status") or "")

    @property
    def output(self) -> str | None:
        return self.get("result")

    @property
    def cost(self) -> float | None:
        return self.get("cost")


AgentResult = AgentStatus  # what wait_for_completion returns: the agent's final status


class Quote(Record):
    """``POST /pricing/quote`` (or one segment of batch-quotes): the fields of its ``quote``
    object (internal_cost, recommended_price, gross_margin_pct, margin_band, segment, ...)
    are attributes of the Quote itself; ``guardrail_check`` is beside them."""

    def __getattr__(self, name: str) -> Any:
        if name in self or name.startswith("__"):
            return super().__getattr__(name)
        inner = self.get("quote")
        if isinstance(inner, dict) and name in inner:
            return wrap(inner[name])
        return super().__getattr__(name)

    @property
    def internal_cost(self) -> float:
        return float(self.__getattr__("internal_cost"))

    @property
    def recommended_price(self) -> float:
        return float(self.__getattr__("recommended_price"))

    @property
    def gross_margin_pct(self) -> float:
        return float(self.__getattr__("gross_margin_pct"))

    @property
    def guardrail_check(self) -> Record:
        return Record(self.get("guardrail_check") or {})
