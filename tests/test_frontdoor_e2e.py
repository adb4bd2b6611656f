"""The OpenAI/Anthropic front door end to end: a real ``j1mskyd serve`` subprocess
(tests/daemon.py) with two providers on loopback fake upstreams, one speaking OpenAI's
format (``openai_compat``, model ``gpt``, falling back to ``claude``) and one Anthropic's
(``anthropic``, model ``claude``), driven by raw HTTP and by the official ``openai`` and
``anthropic`` SDKs (their tests skip where the SDKs are not installed: Debian's stack).

The upstreams run in the test's own event loop; every blocking call to the daemon
(tests/daemon.py speaks urllib) goes through a thread, so the upstreams keep answering.
Streams are paced by the test itself where it matters (:class:`GatedUpstream`: each frame
after the first waits for a permit), so "arrives as several chunks" and "the upstream saw
its connection closed" are shown by order, not by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.daemon import Daemon, db_agents, db_usage
from tests.fakeupstream import FakeUpstream, Reply

ANTHROPIC_KEY_ENV = "E2E_FAKE_ANTHROPIC_KEY"
# Prices per 1k tokens: output $2 (gpt) and $4 (claude), input $1: a worst case is dollars.
MODELS = {"gpt": ("oa", "gpt-up", 1.0, 2.0, "claude"), "claude": ("an", "claude-up", 1.0, 4.0, None)}
WAIT = 20.0  # seconds: the bound of every wait (generous; nothing here is timed)


# -- the upstreams ---------------------------------------------------------------------------

class GatedUpstream(FakeUpstream):
    """A FakeUpstream whose streams the test paces: with ``gated`` set, every frame after a
    stream's first waits for a permit (:meth:`release`).  ``stream_ends`` records how each
    stream ended: ``"finished"``, or ``"closed"`` when its connection was closed under it
    (a write failed, or aiohttp cancelled the handler as 3.8 does)."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.permits = asyncio.Semaphore(0)
        self.stream_ends: list[str] = []
        self.open_streams = 0

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    async def _pause(self, seconds: float) -> None:
        if self.gated and seconds > 0:
            await self.permits.acquire()
        else:
            await super()._pause(seconds)

    async def _stream(self, request: web.Request, frames: list[tuple[str, bool]], reply: Reply,
                      error: str) -> web.StreamResponse:
        self.open_streams += 1
        hangups = self.hangups
        try:
            response = await super()._stream(request, frames, reply, error)
        except asyncio.CancelledError:
            self.stream_ends.append("closed")
            raise
        finally:
            self.open_streams -= 1
        # The base class counts a write into a connection the caller closed as a hang-up.
        self.stream_ends.append("closed" if self.hangups > hangups else "finished")
        return response

    async def close(self) -> None:
        """Let every stream end first (a gated one writes into its closed connection and
        stops), so that no handler is left pending when the test's loop closes."""
        self.release(1000)
        for _ in range(int(WAIT / 0.05)):
            if not self.open_streams:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # aiohttp's connection task collects its handler's end
        await super().close()


def write_e2e_config(path: Path, oa: str, an: str, *, budget: str = "") -> Path:
    models = "".join(
        f'[models.{alias}]\nprovider = "{provider}"\nupstream = "{upstream}"\n'
        f"input_per_1k = {inp}\noutput_per_1k = {out}\nblended_per_1k = {out}\nmax_tokens = 1000\n"
        + (f'fallback = "{fallback}"\n' if fallback else "") + "\n"
        for alias, (provider, upstream, inp, out, fallback) in MODELS.items())
    path.write_text(
        '[server]\nlog_level = "info"\n\n'
        # Two attempts a model, retried at once: a failing upstream falls back quickly.
        "[runtime]\nmax_concurrency = 8\nmax_attempts = 2\nretry_base_delay = 0.01\nretry_max_delay = 0.02\n\n"
        f'[plugins]\ndropin_dir = "{path.parent / "no-plugins.d"}"\n\n'
        f"{budget}\n"
        f'[providers.oa]\nplugin = "openai_compat"\nbase_url = "{oa}/v1"\nmax_concurrency = 8\n\n'
        f'[providers.an]\nplugin = "anthropic"\nbase_url = "{an}"\napi_key_env = "{ANTHROPIC_KEY_ENV}"\n'
        "max_concurrency = 8\n\n"
        f"{models}",
        encoding="utf-8")
    return path


class Door:
    """The daemon and its two upstreams, with async helpers (the daemon's urllib in a thread)."""

    def __init__(self, daemon: Daemon, oa: GatedUpstream, an: GatedUpstream) -> None:
        self.daemon, self.oa, self.an = daemon, oa, an
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    @property
    def token(self) -> str:
        return self.daemon.auth_headers()["Authorization"].removeprefix("Bearer ")

    async def api(self, path: str) -> Any:
        return await asyncio.to_thread(self.daemon.get, path)

    async def agent(self, agent_id: str, statuses: tuple[str, ...] = ("completed", "failed", "cancelled")) -> Any:
        return await asyncio.to_thread(self.daemon.wait_agent, agent_id, statuses, WAIT)

    def headers(self, dialect: str) -> dict[str, str]:
        if dialect == "anthropic":  # as the anthropic SDK sends them
            return {"x-api-key": self.token, "anthropic-version": "2023-06-01"}
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, dialect: str, body: dict[str, Any]) -> Any:
        path = "/v1/messages" if dialect == "anthropic" else "/v1/chat/completions"
        return self.http.post(self.url + path, json=body, headers=self.headers(dialect))


def chat_body(model: str, text: str = "Say hello", *, stream: bool = False, max_tokens: int = 100) -> dict[str, Any]:
    """A call both formats read alike (a user message of text, max_tokens, stream)."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return body


@contextlib.asynccontextmanager
async def front_door(tmp_path: Path, *, budget: str = "") -> AsyncIterator[Door]:
    oa, an = await GatedUpstream().start(), await GatedUpstream().start()
    config = write_e2e_config(tmp_path / "e2e.toml", oa.url, an.url, budget=budget)
    daemon = Daemon(tmp_path, tmp_path / "state", config, env={ANTHROPIC_KEY_ENV: "sk-ant-fake-e2e"})
    door: Door | None = None
    try:
        await asyncio.to_thread(daemon.start)
        door = Door(daemon, oa, an)
        yield door
    finally:
        if door is not None:
            await door.http.close()
            await asyncio.to_thread(door.daemon.close)  # a restarted one (kill -9 test)
        await asyncio.to_thread(daemon.close)
        await oa.close()
        await an.close()


# -- reading streams -------------------------------------------------------------------------

async def frames(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, Any]]:
    """The SSE frames of a response as they arrive: (event name or None, decoded data)."""
    event: str | None = None
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            text = "\n".join(data)
            yield event, (text if text == "[DONE]" else json.loads(text))
            event, data = None, []


def delta_text(dialect: str, event: str | None, data: Any) -> str | None:
    """The text a frame adds to the answer, if it is a text delta."""
    if dialect == "anthropic":
        if event == "content_block_delta" and data["delta"].get("type") == "text_delta":
            return data["delta"]["text"]
        return None
    if isinstance(data, dict) and data.get("choices"):
        return data["choices"][0].get("delta", {}).get("content") or None
    return None


def is_error(dialect: str, event: str | None, data: Any) -> bool:
    if dialect == "anthropic":
        return event == "error" and data["type"] == "error"
    return isinstance(data, dict) and "error" in data


def content_text(content: str | list[dict[str, Any]]) -> str:
    """A message's text as either format sends it upstream: a string, or text parts."""
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


def answer_text(dialect: str, body: dict[str, Any]) -> str:
    if dialect == "anthropic":
        return "".join(b["text"] for b in body["content"] if b["type"] == "text")
    return body["choices"][0]["message"]["content"]


def agent_id_of(dialect: str, message_id: str) -> str:
    """The agent behind an answer: its id is ``chatcmpl-<agent>`` / ``msg_<agent>``."""
    prefix = "msg_" if dialect == "anthropic" else "chatcmpl-"
    assert message_id.startswith(prefix), message_id
    return message_id[len(prefix):]


async def collect(dialect: str, resp: aiohttp.ClientResponse) -> tuple[str, list[tuple[str | None, Any]]]:
    """A whole stream: (its text, its frames)."""
    got = [f async for f in frames(resp)]
    return "".join(t for t in (delta_text(dialect, e, d) for e, d in got) if t), got


def message_id(dialect: str, got: list[tuple[str | None, Any]]) -> str:
    first = got[0][1]
    return first["message"]["id"] if dialect == "anthropic" else first["id"]


async def until(predicate: Any, what: str) -> Any:
    """Poll an async or plain predicate until truthy, at most WAIT seconds."""
    for _ in range(int(WAIT / 0.05)):
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {WAIT:g} s waiting for {what}")


# -- either format reaches either provider ------------------------------------------------------

ACROSS = [("openai", "claude"), ("anthropic", "gpt")]


@pytest.mark.parametrize("dialect,model", ACROSS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_either_format_reaches_the_other_formats_provider(tmp_path, dialect, model, stream):
    async with front_door(tmp_path) as door:
        upstream, other = (door.an, door.oa) if model == "claude" else (door.oa, door.an)
        upstream.reply_text = "hello from the other side"
        async with door.post(dialect, chat_body(model, "Translate me", stream=stream)) as resp:
            assert resp.status == 200, await resp.text()
            if stream:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                text, got = await collect(dialect, resp)
                ident = message_id(dialect, got)
            else:
                body = await resp.json()
                text, ident = answer_text(dialect, body), body["id"]
        assert text == "hello from the other side"
        # The upstream was called in its own format, with the configured upstream model id.
        assert other.calls == [] and len(upstream.calls) == 1
        sent = upstream.calls[0]
        if model == "claude":
            assert sent["path"] == "/v1/messages" and sent["json"]["model"] == "claude-up"
            assert sent["headers"]["x-api-key"] == "sk-ant-fake-e2e"
        else:
            assert sent["path"] == "/v1/chat/completions" and sent["json"]["model"] == "gpt-up"
        [message] = sent["json"]["messages"]
        assert message["role"] == "user" and content_text(message["content"]) == "Translate me"
        assert bool(sent["json"].get("stream")) is stream
        agent = await door.agent(agent_id_of(dialect, ident))
        assert agent["status"] == "completed" and agent["served_by"]["model"] == model
        assert agent["result"] == "hello from the other side"
        assert agent["usage"]["input_tokens"] == upstream.input_tokens
        assert agent["usage"]["output_tokens"] == upstream.output_tokens and agent["cost"] > 0


async def test_the_official_sdks_across_formats(tmp_path):
    openai = pytest.importorskip("openai", reason="the openai SDK is in the PyPI test extra, not on Debian")
    anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is in the PyPI test extra, not on Debian")
    async with front_door(tmp_path) as door:
        door.oa.reply_text = "from the openai upstream"
        door.an.reply_text = "from the anthropic upstream"
        oai = openai.AsyncOpenAI(base_url=door.url + "/v1", api_key=door.token, max_retries=0)
        ant = anthropic.AsyncAnthropic(base_url=door.url, api_key=door.token, max_retries=0)
        try:
            messages = [{"role": "user", "content": "Hi"}]
            # OpenAI's SDK to the anthropic plugin, whole and streamed.
            done = await oai.chat.completions.create(model="claude", messages=messages)
            assert done.choices[0].message.content == "from the anthropic upstream"
            assert done.usage is not None and done.usage.completion_tokens == door.an.output_tokens
            parts = [c.choices[0].delta.content async for c in
                     await oai.chat.completions.create(model="claude", messages=messages, stream=True)
                     if c.choices and c.choices[0].delta.content]
            assert "".join(parts) == "from the anthropic upstream" and len(parts) > 1
            # Anthropic's SDK to the openai_compat plugin, whole and streamed.
            msg = await ant.messages.create(model="gpt", max_tokens=100, messages=messages)
            assert msg.content[0].text == "from the openai upstream" and msg.stop_reason == "end_turn"
            async with ant.messages.stream(model="gpt", max_tokens=100, messages=messages) as s:
                pieces = [t async for t in s.text_stream]
                final = await s.get_final_message()
            assert "".join(pieces) == "from the openai upstream" and len(pieces) > 1
            assert final.usage.output_tokens == door.oa.output_tokens
            assert [c["path"] for c in door.an.calls] == ["/v1/messages"] * 2
            assert [c["path"] for c in door.oa.calls] == ["/v1/chat/completions"] * 2
            # Each call is an agent of kind chat, served by the model asked for.
            rows = await asyncio.to_thread(db_agents, door.daemon.state_dir)
            assert sorted((r["kind"], r["model"], r["status"]) for r in rows.values()) == [
                ("chat", "claude", "completed")] * 2 + [("chat", "gpt", "completed")] * 2
        finally:
            await oai.close()
            await ant.close()


# -- streams are streamed ---------------------------------------------------------------------

@pytest.mark.parametrize("dialect,model", ACROSS)
async def test_a_slow_stream_arrives_as_several_chunks(tmp_path, dialect, model):
    """Each word leaves the upstream only when the test allows it, and the test allows the
    next only after the client has the last: the daemon passes each on as it comes."""
    async with front_door(tmp_path) as door:
        upstream = door.an if model == "claude" else door.oa
        upstream.reply_text = "one two three four"
        upstream.gated, upstream.chunk_delay = True, 1.0  # paced by permits, not by time
        # Anthropic's upstream sends message_start, content_block_start and a ping before
        # its first delta (a permit each after the first frame); OpenAI's starts with one.
        upstream.release(3 if model == "claude" else 0)
        seen: list[str] = []

        async def read() -> None:
            async with door.post(dialect, chat_body(model, stream=True)) as resp:
                assert resp.status == 200
                async for event, data in frames(resp):
                    text = delta_text(dialect, event, data)
                    if text:
                        # The upstream cannot have sent the next word yet: it waits for this permit.
                        seen.append(text)
                        upstream.release(1 if len(seen) < 4 else 100)

        await asyncio.wait_for(read(), WAIT)  # buffering would hold the first word back: a timeout
        assert seen == ["one", " two", " three", " four"]
        assert upstream.stream_ends == ["finished"]


# -- failures ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_provider_failing_before_the_first_byte_falls_back_unseen(tmp_path, dialect, stream):
    async with front_door(tmp_path) as door:
        door.oa.fail_next(2, 503)  # both attempts on gpt's provider, before any byte
        door.an.reply_text = "the fallback answered"
        async with door.post(dialect, chat_body("gpt", stream=stream)) as resp:
            assert resp.status == 200, await resp.text()
            if stream:
                text, got = await collect(dialect, resp)
                assert not any(is_error(dialect, e, d) for e, d in got)
                ident = message_id(dialect, got)
            else:
                body = await resp.json()
                text, ident = answer_text(dialect, body), body["id"]
        assert text == "the fallback answered"
        assert len(door.oa.calls) == 2 and len(door.an.calls) == 1
        agent = await door.agent(agent_id_of(dialect, ident))
        assert agent["status"] == "completed" and agent["model"] == "gpt"
        assert agent["served_by"] == {"model": "claude", "provider": "an"}


async def test_the_openai_sdk_sees_no_error_when_a_provider_falls_back(tmp_path):
    openai = pytest.importorskip("openai", reason="the openai SDK is in the PyPI test extra, not on Debian")
    async with front_door(tmp_path) as door:
        door.oa.fail_next(4, 500)
        door.an.reply_text = "fallback"
        client = openai.AsyncOpenAI(base_url=door.url + "/v1", api_key=door.token, max_retries=0)
        try:
            done = await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}])
            assert done.choices[0].message.content == "fallback"
            stream = await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "x"}],
                                                          stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "fallback"
        finally:
            await client.close()


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_a_provider_dying_mid_stream_fails_the_call_in_the_dialect_and_bills_what_streamed(tmp_path, dialect):
    async with front_door(tmp_path) as door:
        door.oa.reply_text = "alpha beta gamma delta epsilon"
        door.oa.die_after_next(2)  # two words, then the connection drops: no usage, no end
        async with door.post(dialect, chat_body("gpt", stream=True)) as resp:
            assert resp.status == 200
            text, got = await collect(dialect, resp)
        assert text == "alpha beta"
        assert is_error(dialect, *got[-1]), got[-1]  # the dialect's own error frame ends it
        assert ("[DONE]" not in [d for _, d in got]) and not any(e == "message_stop" for e, _ in got)
        # No silent switch of model once bytes went out: gpt's fallback was never called.
        assert door.an.calls == [] and len(door.oa.calls) == 1
        agent = await door.agent(agent_id_of(dialect, message_id(dialect, got)))
        assert agent["status"] == "failed" and "broke off" in agent["error"] and agent["served_by"] is None
        # What streamed is billed: the upstream sent no usage, so it is counted from the chunks
        # (the two words' tokens, and the request's input bound).
        assert agent["cost"] > 0
        billing = await door.api("/api/billing/usage")
        assert billing["calls"] == 1 and billing["total_cost"] == pytest.approx(agent["cost"])
        assert billing["tokens"]["output"] >= 2 and billing["tokens"]["input"] > 0


async def test_the_sdks_raise_on_a_stream_that_dies(tmp_path):
    openai = pytest.importorskip("openai", reason="the openai SDK is in the PyPI test extra, not on Debian")
    anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is in the PyPI test extra, not on Debian")
    async with front_door(tmp_path) as door:
        door.oa.reply_text = "alpha beta gamma"
        door.oa.die_after_next(1, n=2)
        oai = openai.AsyncOpenAI(base_url=door.url + "/v1", api_key=door.token, max_retries=0)
        ant = anthropic.AsyncAnthropic(base_url=door.url, api_key=door.token, max_retries=0)
        try:
            parts: list[str] = []
            with pytest.raises(openai.APIError):
                async for chunk in await oai.chat.completions.create(
                        model="gpt", messages=[{"role": "user", "content": "x"}], stream=True):
                    parts += [chunk.choices[0].delta.content or ""] if chunk.choices else []
            assert "".join(parts) == "alpha"
            pieces: list[str] = []
            with pytest.raises(anthropic.APIError):
                async with ant.messages.stream(model="gpt", max_tokens=50,
                                               messages=[{"role": "user", "content": "x"}]) as s:
                    async for t in s.text_stream:
                        pieces.append(t)
            assert "".join(pieces) == "alpha"
        finally:
            await oai.close()
            await ant.close()


@pytest.mark.parametrize("dialect,model", ACROSS)
async def test_a_client_that_goes_away_mid_stream_cancels_the_upstream_call(tmp_path, dialect, model):
    async with front_door(tmp_path) as door:
        upstream = door.an if model == "claude" else door.oa
        upstream.reply_text = " ".join(f"w{i}" for i in range(200))
        upstream.gated, upstream.chunk_delay = True, 1.0
        upstream.release(3)  # the first words (after Anthropic's block start and ping)
        resp = await door.post(dialect, chat_body(model, stream=True, max_tokens=1000))
        assert resp.status == 200
        first: list[tuple[str | None, Any]] = []
        async for event, data in frames(resp):
            first.append((event, data))
            if delta_text(dialect, event, data):
                break
        ident = message_id(dialect, first)
        resp.close()  # the client goes away mid-stream: its connection is closed
        # The daemon notices at its next write (or at once, where aiohttp cancels the
        # handler): one word at a time, until the upstream's connection is closed under it.
        for _ in range(150):
            if upstream.stream_ends:
                break
            upstream.release(1)
            await asyncio.sleep(0.05)
        assert upstream.stream_ends == ["closed"]
        agent = await door.agent(agent_id_of(dialect, ident))
        assert agent["status"] == "cancelled"
        # What was streamed is billed (counted from the chunks: the upstream sent no usage).
        assert agent["cost"] > 0
        billing = await door.api("/api/billing/usage")
        assert billing["calls"] == 1 and billing["total_cost"] == pytest.approx(agent["cost"])
        assert billing["tokens"]["output"] >= 1
        assert (await door.api("/api/rate-limits"))["budget"]["reserved"] == 0  # the rest is released


# -- every call is a j1mskyd call -------------------------------------------------------------------

async def test_every_call_is_an_agent_of_kind_chat_with_usage_cost_and_events(tmp_path):
    async with front_door(tmp_path) as door:
        ids = []
        for dialect, model, stream in [("openai", "gpt", False), ("openai", "claude", True),
                                       ("anthropic", "claude", False), ("anthropic", "gpt", True)]:
            async with door.post(dialect, chat_body(model, stream=stream)) as resp:
                assert resp.status == 200
                if stream:
                    _, got = await collect(dialect, resp)
                    ids.append(agent_id_of(dialect, message_id(dialect, got)))
                else:
                    ids.append(agent_id_of(dialect, (await resp.json())["id"]))
        for agent_id in ids:
            await door.agent(agent_id)
        # A spawn beside them: ?kind=chat lists the four calls and only them.
        spawned_id = (await asyncio.to_thread(door.daemon.post, "/api/spawn",
                                              {"task": "not a chat", "model": "gpt"}))["agent_id"]
        await door.agent(spawned_id)
        listed = {a["agent_id"]: a for a in (await door.api("/api/agents?kind=chat&limit=50"))["data"]}
        assert set(listed) == set(ids) and all(a["kind"] == "chat" for a in listed.values())
        rows = await asyncio.to_thread(db_agents, door.daemon.state_dir)
        for agent_id in ids:
            assert rows[agent_id]["kind"] == "chat" and rows[agent_id]["status"] == "completed"
            assert rows[agent_id]["input_tokens"] == 11 and rows[agent_id]["output_tokens"] == 7
            assert listed[agent_id]["actual_cost"] > 0
            # The prompt is sealed at rest like any agent's task.
            assert rows[agent_id]["task"] and "Say hello" not in rows[agent_id]["task"]
        for agent_id in ids:
            agent = await door.api(f"/api/agent/{agent_id}")
            assert agent["kind"] == "chat" and agent["usage"] == {"input_tokens": 11, "output_tokens": 7}
            assert agent["served_by"]["model"] == agent["model"] and agent["time_to_first_token"] is not None
        spawn_cost = (await door.api(f"/api/agent/{spawned_id}"))["cost"]
        billing = await door.api("/api/billing/usage")
        assert billing["calls"] == 5
        assert billing["total_cost"] == pytest.approx(sum(listed[i]["actual_cost"] for i in ids) + spawn_cost)
        events = (await door.api("/api/events?limit=500"))["data"]
        done = {e["data"]["agent_id"] for e in events if e["event"] == "agent.completed"}
        spawned = {e["data"]["agent_id"] for e in events if e["event"] == "agent.spawned"}
        assert set(ids) <= done and set(ids) <= spawned


async def test_the_daily_budget_stays_hard_under_concurrent_calls(tmp_path):
    """Each call's worst case is 1000 output tokens of claude ($4 at $4 per 1k) plus its input
    bound; with a $10 day two fit, and the upstream bills every call its maximum, so an
    overshoot would show in the ledger."""
    budget = "[budget]\ndaily_budget = 10.0\nmonthly_ceiling = 300.0\nspike_per_hour = 1000.0\n"
    async with front_door(tmp_path, budget=budget) as door:
        door.an.bill_max_tokens = True
        door.an.delay = 0.5  # the calls overlap

        async def one(i: int) -> tuple[int, Any]:
            dialect = "openai" if i % 2 else "anthropic"
            async with door.post(dialect, chat_body("claude", max_tokens=1000)) as resp:
                return resp.status, (dialect, await resp.json())

        results = await asyncio.gather(*(one(i) for i in range(8)))
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert len(ok) == 2 and len(refused) == 6
        for status, (dialect, body) in refused:
            assert status == 429, body
            if dialect == "openai":
                assert body["error"]["code"] == "insufficient_quota" and body["error"]["type"] == "insufficient_quota"
            else:
                assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        billing = await door.api("/api/billing/usage")
        assert billing["total_cost"] <= 10.0 + 1e-9
        each = (door.an.input_tokens * 1.0 + 1000 * 4.0) / 1000  # billed its maximum: $4.011
        assert billing["total_cost"] == pytest.approx(each * len(ok))
        budget_now = (await door.api("/api/rate-limits"))["budget"]
        assert budget_now["reserved"] == 0 and budget_now["today_spend"] <= 10.0 + 1e-9
        # Refused calls changed nothing: no agent, no upstream call.
        rows = await asyncio.to_thread(db_agents, door.daemon.state_dir)
        assert len(rows) == len(ok) == len(door.an.calls)


async def test_the_sdks_raise_their_rate_limit_error_when_the_budget_is_spent(tmp_path):
    openai = pytest.importorskip("openai", reason="the openai SDK is in the PyPI test extra, not on Debian")
    anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is in the PyPI test extra, not on Debian")
    budget = "[budget]\ndaily_budget = 1.0\nmonthly_ceiling = 30.0\nspike_per_hour = 1000.0\n"
    async with front_door(tmp_path, budget=budget) as door:
        oai = openai.AsyncOpenAI(base_url=door.url + "/v1", api_key=door.token, max_retries=0)
        ant = anthropic.AsyncAnthropic(base_url=door.url, api_key=door.token, max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as raised:
                await oai.chat.completions.create(model="claude", max_tokens=1000,
                                                  messages=[{"role": "user", "content": "x"}])
            assert raised.value.code == "insufficient_quota"
            with pytest.raises(anthropic.RateLimitError):
                await ant.messages.create(model="claude", max_tokens=1000, messages=[{"role": "user", "content": "x"}])
            assert door.an.calls == []
        finally:
            await oai.close()
            await ant.close()


async def test_kill_9_during_a_chat_call_fails_it_as_interrupted_refunded_and_loses_nothing(tmp_path):
    async with front_door(tmp_path) as door:
        # One call done before the crash, one in flight at it.
        async with door.post("openai", chat_body("gpt")) as resp:
            done_id = agent_id_of("openai", (await resp.json())["id"])
        # The call in flight: its upstream has begun (message_start) and waits for the test's
        # permit to go on, so the daemon holds it running with nothing sent to its client yet.
        door.an.gated, door.an.chunk_delay = True, 1.0
        pending = asyncio.ensure_future(_status_of(door.post("anthropic", chat_body("claude", stream=True))))
        await until(lambda: len(door.an.calls) == 1, "the call to reach the upstream")

        async def running() -> list[str]:
            rows = await asyncio.to_thread(db_agents, door.daemon.state_dir)
            return [i for i, r in rows.items() if r["status"] == "running"]

        [live_id] = await until(running, "the call's agent to be running on disk")
        before = (await door.api("/api/rate-limits"))["budget"]
        assert before["reserved"] > 0
        agent = await _kill_9_and_restart(door, tmp_path, pending, live_id)
        after = (await door.api("/api/rate-limits"))["budget"]
        assert after["reserved"] == 0  # its reservation is released
        # Nothing came back from the upstream, which may bill the call whole: it is billed at its
        # worst case, the max_tokens it was sent (100) at claude's $4/1k, and the input bound.
        [cut] = (await asyncio.to_thread(db_usage, door.daemon.state_dir))[live_id]
        assert cut["cut"] == 1 and cut["output_tokens"] == 100 and cut["model"] == "claude"
        assert cut["cost"] == pytest.approx(cut["input_tokens"] / 1000 + 100 * 4.0 / 1000)
        assert agent["cost"] == pytest.approx(cut["cost"], abs=1e-6)
        kept = await door.agent(done_id, ("completed",))
        assert kept["result"] == "fake reply" and kept["cost"] > 0
        billing = await door.api("/api/billing/usage")
        assert billing["calls"] == 2 and billing["total_cost"] == pytest.approx(kept["cost"] + agent["cost"], abs=1e-5)
        assert len(door.an.calls) == 1  # a chat call is never re-run: its client is gone


async def test_kill_9_as_soon_as_a_call_not_streamed_is_on_disk_bills_the_call_it_cut(tmp_path):
    """A call that is not streamed, whose upstream holds its answer: its insert commits after
    runtime.DEFER_INSERT with its `running` state in the same transaction, so whatever moment
    after that the crash comes, the next start finds it running and bills the cut call (a row
    left `queued` while its request was out would not be billed).  The whole path through a real
    process; that no commit leaves it queued is shown exactly, commit by commit, by
    tests/test_chat_dispatch_on_submit.py (a kill here rarely lands in that one commit)."""
    async with front_door(tmp_path) as door:
        door.oa.gated, door.oa.delay = True, 1.0  # the answer waits for a permit that never comes
        pending = asyncio.ensure_future(_status_of(door.post("openai", chat_body("gpt"))))
        await until(lambda: len(door.oa.calls) == 1, "the call to reach the upstream")

        async def on_disk() -> list[str]:
            return list(await asyncio.to_thread(db_agents, door.daemon.state_dir))

        [live_id] = await until(on_disk, "the call's row on disk")
        agent = await _kill_9_and_restart(door, tmp_path, pending, live_id)  # at once
        [cut] = (await asyncio.to_thread(db_usage, door.daemon.state_dir))[live_id]
        # Billed at its worst case: the max_tokens it was sent (100) at gpt's $2/1k, and the input bound.
        assert cut["cut"] == 1 and cut["output_tokens"] == 100 and cut["model"] == "gpt"
        assert agent["cost"] == pytest.approx(cut["cost"], abs=1e-6) and cut["cost"] > 0.2
        assert (await door.api("/api/rate-limits"))["budget"]["reserved"] == 0
        assert len(door.oa.calls) == 1 and door.an.calls == []  # never re-run, no fallback


async def _kill_9_and_restart(door: Door, tmp_path: Path, pending: asyncio.Future[int | None],
                              live_id: str) -> Any:
    """kill -9 the daemon (the pending call's connection is cut), start a second one on the same
    state: the call in flight is failed as interrupted; its agent as the second daemon has it."""
    await asyncio.to_thread(door.daemon.kill)
    assert await asyncio.wait_for(pending, WAIT) is None  # the client's connection was cut
    second = Daemon(tmp_path, tmp_path / "state", door.daemon.config, name="second",
                    env={ANTHROPIC_KEY_ENV: "sk-ant-fake-e2e"})
    door.daemon = second
    await asyncio.to_thread(second.start)
    agent = await door.agent(live_id, ("failed",))
    assert "interrupted" in agent["error"]
    return agent


async def _status_of(request: Any) -> int | None:
    """The status of a request, or None when its connection was cut before an answer."""
    try:
        async with request as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return None

