"""A streamed text delta's frame, cut once and filled per delta (dialects.TextFrame), is byte for
byte the frame the whole chunk's encoding gives, in both dialects."""

from __future__ import annotations

import pytest

from j1mskyd.chat_request import ChatRequest
from j1mskyd.dialects import TextFrame
from j1mskyd.dialects.anthropic_messages import DIALECT as ANTHROPIC, _event
from j1mskyd.dialects.openai_chat import OPENAI
from j1mskyd.plugin_api import Message, TextBlock

TEXTS = ["ok", "", " two", 'a "quoted" \\ word', "line\nbreak\ttab", "é ü ß 中文 🎉", '"content":""', '"text":""',
         "\u2028\u2029", "\x00\x1f", "x" * 5000]
# Names that hold the key and quotes themselves: only the text's own key"" may be cut at.
MODELS = ["k2p5", 'odd"content":""model', 'odd"text":""model', "é"]


def request(model: str, *, usage: bool = False, dialect: str = "openai") -> ChatRequest:
    return ChatRequest(model=model, messages=(Message("user", (TextBlock("hi"),)),), stream=True,
                       include_usage=usage, dialect=dialect)  # type: ignore[arg-type]


@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_openai_delta_frames_are_the_whole_chunks_encoding(model, usage):
    encoder = OPENAI.encoder(request(model, usage=usage), "agent-1", 1700000000.5)
    for text in TEXTS:
        assert encoder.delta(text) == encoder._delta({"content": text}), text


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_delta_frames_are_the_whole_events_encoding(model):
    stream = ANTHROPIC.encoder(request(model, dialect="anthropic"), "agent-1", 1700000000.5)
    stream.start()
    first = stream.delta("first")
    assert first.endswith(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": {"type": "text_delta", "text": "first"}}))
    for text in TEXTS[1:]:
        expected = b"" if not text else _event("content_block_delta", {
            "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
        assert stream.delta(text) == expected, text


def test_a_frame_without_the_empty_text_is_refused():
    with pytest.raises(ValueError):
        TextFrame(b'data: {"content":"x"}\n\n', b'"content":')
