"""``POST /v1/messages/count_tokens``: Anthropic's token count, as an estimate said to be one.

j1mskyd has no tokenizer for its providers' models, so the count is
``anthropic_messages.estimate_input_tokens`` (about four characters a token over the text the
provider would be sent), labelled in the body (``"estimated": true``, beside the
``input_tokens`` the SDK reads) and in a header.  No agent is made and nothing is spent.
(``POST /v1/messages`` itself is the shared front-door handler, frontdoor.chat_handler.)
"""

from __future__ import annotations

from aiohttp import web

from ..dialects.anthropic_messages import estimate_input_tokens, parse_count
from .common import config_of, json_response, read_json

__all__ = ["ESTIMATE_HEADER", "count_tokens"]

ESTIMATE_HEADER = "X-J1MSKY-Token-Count"


async def count_tokens(request: web.Request) -> web.Response:
    """Estimate a Messages request's input tokens (about four characters a token; no call)"""
    chat = parse_count(await read_json(request), config_of(request).models)
    return json_response({"input_tokens": estimate_input_tokens(chat), "estimated": True},
                         headers={ESTIMATE_HEADER: "estimate"})
