"""The most an agent may cost: what the budget reserves for it, and the ``max_tokens`` each
of its calls is sent.

A provider bills the input tokens it read and the output tokens it wrote.  Neither is known
before the call, but both are bounded:

* input: byte-level tokenizers (those of GPT, Claude, Llama, Kimi, MiniMax, ...) make at most
  one token per UTF-8 byte of text, plus the few tokens of the chat template around the
  message (``FRAMING_TOKENS``);
* output: at most the ``max_tokens`` the upstream is sent.

Any model of an agent's fallback chain may be the one that answers, so the agent's worst
case is the largest, over its chain, of that input bound plus the model's ``max_tokens``,
each at that model's prices.  That is reserved at spawn; each call is then sent a
``max_tokens`` no larger than what the reservation pays for at the prices of the model
called, so a model whose output costs more than planned gets fewer tokens, never more money.
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import ModelConfig
from .pricing import token_cost

__all__ = ["FRAMING_TOKENS", "agent_bound", "call_bound", "fallback_chain", "input_bound", "output_allowance",
           "output_cap"]

FRAMING_TOKENS = 64  # role markers and message separators a chat template adds around the text


def fallback_chain(models: Mapping[str, ModelConfig], alias: str) -> list[str]:
    """``alias`` and the models it falls back to, in order, each once."""
    chain: list[str] = []
    current: str | None = alias
    while current is not None and current not in chain and current in models:
        chain.append(current)
        current = models[current].fallback
    return chain


def input_bound(prompt: str, system: str | None = None) -> int:
    """The most input tokens a provider can count for this text."""
    return len(prompt.encode("utf-8", "surrogatepass")) + len((system or "").encode("utf-8", "surrogatepass")) \
        + FRAMING_TOKENS


def call_bound(model: ModelConfig, prompt: str, output_tokens: int) -> float:
    """The most one call to ``model`` can cost when it is sent ``max_tokens=output_tokens``."""
    return token_cost(model, input_bound(prompt), output_tokens)


def output_cap(model: ModelConfig, max_tokens: int | None = None) -> int:
    """The most output a call to ``model`` may ask for: its ``max_tokens``, or less when the
    caller asked for less (a chat call's own ``max_tokens``)."""
    return model.max_tokens if max_tokens is None else min(max_tokens, model.max_tokens)


def agent_bound(models: Mapping[str, ModelConfig], alias: str, prompt: str, max_tokens: int | None = None) -> float:
    """The reservation of an agent: the dearest full call of its fallback chain (0 for an
    alias that is no longer configured: such an agent makes no call).  ``max_tokens``: the
    output a chat call asked for (each model's own cap still applies); None: the model's cap.
    For a chat call ``prompt`` is the request's canonical JSON, which holds every character
    sent upstream (messages, system, tools), so its bound covers the call's input."""
    return max((call_bound(models[a], prompt, output_cap(models[a], max_tokens))
                for a in fallback_chain(models, alias)), default=0.0)


def output_allowance(model: ModelConfig, prompt: str, amount: float, max_tokens: int | None = None) -> int:
    """The ``max_tokens`` to send ``model``: its own cap (or the caller's ``max_tokens`` when
    lower), or fewer when ``amount`` pays for fewer; 0 when ``amount`` does not even pay for
    the input."""
    cap = output_cap(model, max_tokens)
    left = amount - call_bound(model, prompt, 0)
    if left < 0:
        return 0
    if model.output_per_1k <= 0:
        return cap
    # One above the float quotient, then down: the quotient of an amount that pays exactly for
    # ``cap`` tokens (the reservation of this very call) can round to cap - 1.
    tokens = min(cap, int(left / model.output_per_1k * 1000) + 1)
    while tokens > 0 and call_bound(model, prompt, tokens) > amount:  # float rounding: at most a step or two
        tokens -= 1
    return tokens
