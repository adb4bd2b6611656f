"""The built-in provider plugins, loaded through the registry, against real loopback servers."""

from __future__ import annotations

import json
import math
import socket
import time
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest

from j1mskyd.plugins import PluginError, PluginRegistry, build_provider, load_plugins
from j1mskyd.provider_http import HttpCaller, estimate_tokens, kind_for_status, parse_retry_after
from j1mskyd.providers import CompletionRequest, ProviderError, ProviderSettings
from tests.fakeupstream import FakeUpstream, fake_upstream  # noqa: F401 - fixture

BUILTIN = Path(__file__).resolve().parent.parent / "j1mskyd" / "builtin_plugins"
KEY = "sk-test-SECRET-0123456789"


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    registry = PluginRegistry()
    load_plugins(registry, BUILTIN, None)
    return registry


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


def make(registry, session, plugin, base_url="", api_key=KEY, **options):
    return build_provider(registry, ProviderSettings(name="p1", plugin=plugin, base_url=base_url,
                                                     api_key=api_key, options=options), session)


def upstream_base(plugin: str, upstream: FakeUpstream) -> str:
    return upstream.url + "/v1" if plugin == "openai_compat" else upstream.url


REQ = CompletionRequest(model="m-1", prompt="Write a haiku about the sea", max_tokens=64, system="Be brief.", timeout=5)


# -- helpers ----------------------------------------------------------------------


def test_parse_retry_after():
    now = time.time()
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None and parse_retry_after("nan") is None
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("status, kind", [
    (429, "rate_limited"), (408, "timeout"), (401, "auth"), (403, "auth"), (400, "bad_request"),
    (404, "bad_request"), (413, "bad_request"), (500, "server_error"), (503, "server_error"),
    (529, "server_error"), (302, "invalid_response"),
])
def test_kind_for_status(status, kind):
    assert kind_for_status(status) == kind


# -- offline ------------------------------------------------------------------------


async def test_offline_is_deterministic_and_counts_tokens(registry):
    provider = make(registry, None, "offline")
    a, b = await provider.complete(REQ), await provider.complete(REQ)
    assert a == b
    assert a.text.startswith("[offline:m-1] Write a haiku about the sea (id ")
    assert a.input_tokens == math.ceil(len(REQ.prompt) / 4)
    assert a.output_tokens == math.ceil(len(a.text) / 4)
    assert (a.model, a.finish_reason) == ("m-1", "stop")
    other = await provider.complete(CompletionRequest(model="m-1", prompt="Write a haiku about the sky"))
    assert other.text != a.text
    tiny = await provider.complete(CompletionRequest(model="m", prompt=""))
    assert tiny.input_tokens == 1 and tiny.output_tokens >= 1


async def test_offline_summarises_long_prompts_and_honours_max_tokens(registry):
    provider = make(registry, None, "offline")
    long = await provider.complete(CompletionRequest(model="m", prompt="word " * 5000))
    assert long.text.count("word") == 12 and "…" in long.text
    assert long.input_tokens == 6250
    short = await provider.complete(CompletionRequest(model="m", prompt="a b c d e f", max_tokens=2))
    assert short.finish_reason == "length" and short.output_tokens <= 2


async def test_offline_delay_and_fail_options(registry):
    slow = make(registry, None, "offline", delay=0.2)
    started = time.monotonic()
    await slow.complete(REQ)
    assert time.monotonic() - started >= 0.19
    failing = make(registry, None, "offline", fail="rate_limited")
    with pytest.raises(ProviderError) as info:
        await failing.complete(REQ)
    assert info.value.kind == "rate_limited" and info.value.retryable
    with pytest.raises(PluginError, match="options.delay"):
        make(registry, None, "offline", delay="slow")
    with pytest.raises(PluginError, match="options.fail"):
        make(registry, None, "offline", fail="explode")


# -- success --------------------------------------------------------------------------


async def test_openai_compat_success(registry, session, fake_upstream):
    provider = make(registry, session, "openai_compat", upstream_base("openai_compat", fake_upstream),
                    headers={"X-Org": "j1msky"})
    result = await provider.complete(REQ)
    assert (result.text, result.input_tokens, result.output_tokens) == ("fake reply", 11, 7)
    assert (result.model, result.finish_reason) == ("m-1", "stop")
    [call] = fake_upstream.calls
    assert call["path"] == "/v1/chat/completions"
    assert call["json"] == {"model": "m-1", "max_tokens": 64, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": REQ.prompt}]}
    assert call["headers"]["authorization"] == f"Bearer {KEY}"
    assert call["headers"]["x-org"] == "j1msky"
    assert call["headers"]["content-type"] == "application/json"


async def test_openai_compat_without_key_or_system(registry, session, fake_upstream):
    provider = make(registry, session, "openai_compat", fake_upstream.url + "/v1/", api_key=None)
    await provider.complete(CompletionRequest(model="llama", prompt="hi"))
    [call] = fake_upstream.calls
    assert "authorization" not in call["headers"]
    assert call["json"]["messages"] == [{"role": "user", "content": "hi"}]


async def test_openai_compat_estimates_missing_usage(registry, session, fake_upstream):
    body = {"choices": [{"message": {"content": "twelve chars"}, "finish_reason": "length"}]}
    fake_upstream.fail_next(1, 200, body=json.dumps(body))
    provider = make(registry, session, "openai_compat", fake_upstream.url + "/v1")
    result = await provider.complete(REQ)
    assert result.text == "twelve chars" and result.finish_reason == "length"
    assert result.output_tokens == 3
    assert result.input_tokens == estimate_tokens(REQ.system + REQ.prompt)


async def test_openai_compat_stream(registry, session, fake_upstream):
    fake_upstream.reply_text = "one two three"
    provider = make(registry, session, "openai_compat", fake_upstream.url + "/v1")
    deltas = [d async for d in provider.stream(REQ)]
    assert deltas[:-1] == ["one", " two", " three"]
    final = deltas[-1]  # the whole text with the upstream's usage
    assert final.text == "one two three" and (final.input_tokens, final.output_tokens) == (11, 7)
    assert fake_upstream.calls[0]["json"]["stream"] is True
    fake_upstream.fail_next(1, 429, retry_after=2)
    with pytest.raises(ProviderError) as info:
        [d async for d in provider.stream(REQ)]
    assert (info.value.kind, info.value.retry_after) == ("rate_limited", 2.0)


async def test_anthropic_success(registry, session, fake_upstream):
    provider = make(registry, session, "anthropic", fake_upstream.url)
    result = await provider.complete(REQ)
    assert (result.text, result.input_tokens, result.output_tokens) == ("fake reply", 11, 7)
    assert (result.model, result.finish_reason) == ("m-1", "stop")
    [call] = fake_upstream.calls
    assert call["path"] == "/v1/messages"
    assert call["json"] == {"model": "m-1", "max_tokens": 64, "system": "Be brief.",
                            "messages": [{"role": "user", "content": REQ.prompt}]}
    assert call["headers"]["x-api-key"] == KEY
    assert call["headers"]["anthropic-version"] == "2023-06-01"
    assert call["headers"]["content-type"] == "application/json"
    assert "authorization" not in call["headers"]


async def test_anthropic_options_and_block_joining(registry, session, fake_upstream):
    body = {"content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t"}, {"type": "text", "text": "b"}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 4}}
    fake_upstream.fail_next(1, 200, body=json.dumps(body))
    provider = make(registry, session, "anthropic", fake_upstream.url, anthropic_version="2099-01-01")
    result = await provider.complete(CompletionRequest(model="c", prompt="hi"))
    assert (result.text, result.finish_reason, result.input_tokens, result.output_tokens) == ("ab", "length", 3, 4)
    assert fake_upstream.calls[0]["headers"]["anthropic-version"] == "2099-01-01"
    assert "system" not in fake_upstream.calls[0]["json"]


async def test_anthropic_without_key_is_auth_error(registry, session, fake_upstream):
    provider = make(registry, session, "anthropic", fake_upstream.url, api_key=None)
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert (info.value.kind, info.value.status) == ("auth", 401)
    assert "authentication_error" in info.value.message


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
@pytest.mark.parametrize("status, retry_after, kind, expect_retry", [
    (429, 3, "rate_limited", 3.0),
    (429, None, "rate_limited", None),
    (500, None, "server_error", None),
    (503, 1.5, "server_error", 1.5),
    (529, 4, "server_error", 4.0),
    (401, None, "auth", None),
    (403, None, "auth", None),
    (408, None, "timeout", None),
    (400, None, "bad_request", None),
    (404, None, "bad_request", None),
    (413, None, "bad_request", None),
    (302, None, "invalid_response", None),
])
async def test_error_status_mapping(registry, session, fake_upstream, plugin, status, retry_after, kind, expect_retry):
    fake_upstream.fail_next(1, status, retry_after=retry_after)
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    err = info.value
    assert (err.kind, err.status, err.retry_after) == (kind, status, expect_retry)
    if 400 <= status < 600:
        assert f"fake upstream error {status}" in err.message  # the upstream's own message
    assert KEY not in str(err) and KEY not in repr(err)
    # The failure was one call; the next one succeeds.
    assert (await provider.complete(REQ)).text == "fake reply"


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_retry_after_http_date(registry, session, fake_upstream, plugin):
    fake_upstream.fail_next(1, 429, retry_after=formatdate(time.time() + 60, usegmt=True))
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert info.value.kind == "rate_limited" and 55 <= info.value.retry_after <= 60


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_overloaded_shapes(registry, session, fake_upstream, plugin):
    fake_upstream.fail_next(1, 529)
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert info.value.retryable and info.value.status == 529
    if plugin == "anthropic":
        assert "overloaded_error" in info.value.message


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_timeout(registry, session, fake_upstream, plugin):
    fake_upstream.delay = 60.0  # far beyond the bound below: only the timeout can end the call in time
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await provider.complete(CompletionRequest(model="m", prompt="hi", timeout=0.2))
    assert info.value.kind == "timeout" and info.value.retryable
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_connection_refused(registry, session, plugin):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = make(registry, session, plugin, f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert info.value.kind == "connection" and info.value.status is None
    assert KEY not in str(info.value)


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_malformed_json(registry, session, fake_upstream, plugin):
    fake_upstream.malformed_next(1)
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert (info.value.kind, info.value.status) == ("invalid_response", 200)


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
@pytest.mark.parametrize("body", ['{"unexpected": true}', "[1, 2]", '{"choices": [], "content": "x"}'])
async def test_missing_fields(registry, session, fake_upstream, plugin, body):
    fake_upstream.fail_next(1, 200, body=body)
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert info.value.kind == "invalid_response"


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_key_echoed_by_upstream_is_redacted(registry, session, fake_upstream, plugin):
    fake_upstream.fail_next(1, 401, body=json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    fake_upstream.fail_next(1, 502, body=f"<html>proxy error for key={KEY}</html>")
    provider = make(registry, session, plugin, upstream_base(plugin, fake_upstream))
    for kind in ("auth", "server_error"):
        with pytest.raises(ProviderError) as info:
            await provider.complete(REQ)
        assert info.value.kind == kind
        assert KEY not in str(info.value) and KEY not in repr(info.value)
        assert "[redacted]" in info.value.message


async def test_a_url_is_parsed_once_per_caller_in_a_bounded_cache(session, fake_upstream):
    """aiohttp takes a parsed URL as it is (a text one it parses on every request): the caller
    keeps each URL parsed, a few of them, and text that does not parse goes on as text."""
    from yarl import URL
    http = HttpCaller(session, "t", None)
    url = fake_upstream.url + "/v1/chat/completions"
    first = http._target(url)
    assert isinstance(first, URL) and str(first) == url and http._target(url) is first
    answer = await http.post_json(url, {"model": "m", "messages": []}, {}, 5)
    assert isinstance(answer, dict) and fake_upstream.calls[-1]["path"] == "/v1/chat/completions"
    for i in range(40):
        http._target(f"{fake_upstream.url}/v{i}/chat/completions")
    assert 0 < len(http._urls) <= 16
    assert http._target("http://[::1/v1") == "http://[::1/v1"
    with pytest.raises(ProviderError) as info:  # aiohttp's own refusal, as before
        await http.post_json("http://[::1/v1", {}, {}, 5)
    assert info.value.kind == "bad_request" and "invalid URL" in info.value.message


async def test_invalid_base_url_is_bad_request(registry, session):
    provider = make(registry, session, "openai_compat", "not a url")
    with pytest.raises(ProviderError) as info:
        await provider.complete(REQ)
    assert info.value.kind == "bad_request"
    assert KEY not in str(info.value)
