"""A tiny Chrome DevTools Protocol driver for the dashboard's browser tests.

It starts Debian's ``chromium`` headless with its own throwaway profile, reads the
DevTools port the browser picked (``--remote-debugging-port=0`` writes it to
``DevToolsActivePort`` in the profile), and talks to the page target over aiohttp's
WebSocket client.  Enough for a test: navigate, evaluate JavaScript (promises
awaited), poll for a condition, take a screenshot, and collect every console error,
uncaught exception and Content-Security-Policy violation, so a test can fail on them.

No node, no playwright, no selenium: only aiohttp, which j1mskyd already depends on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "BrowserError", "ConsoleProblem", "JsError", "find_chromium"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
         "--password-store=basic", "--use-mock-keychain", "--mute-audio", "--window-size=1280,900",
         "--remote-debugging-port=0")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser or the protocol failed (not the page)."""


class JsError(AssertionError):
    """An expression evaluated in the page threw."""


@dataclass(frozen=True)
class ConsoleProblem:
    """One console error, uncaught exception or CSP violation seen in the page."""

    kind: str    # "exception", "console", or a Log domain source: "network", "security", "javascript"...
    text: str
    url: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text}" + (f" ({self.url})" if self.url else "")


class Browser:
    """One headless Chromium with one page; use ``async with Browser.launch(...)``."""

    def __init__(self, proc: subprocess.Popen[bytes], profile: Path, log: Path) -> None:
        self.proc = proc
        self.profile = profile
        self.log_path = log
        self.problems: list[ConsoleProblem] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, workdir: Path, binary: str, timeout: float = 30.0):
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = workdir / "chromium.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: teardown ends all of it
        browser = cls(proc, profile, log)
        try:
            await browser._connect(timeout)
            yield browser
        finally:
            await browser.close()

    async def _connect(self, timeout: float) -> None:
        port_file = self.profile / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > end:
                raise BrowserError(f"chromium wrote no DevToolsActivePort within {timeout:g} s:\n{self.log()}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        page = None
        while page is None:  # the first page target appears shortly after the port
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json(content_type=None)
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                if time.monotonic() > end:
                    raise BrowserError(f"no page target: {targets}")
                await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 5)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this launch made: renderers, zygote, gpu
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- the protocol ------------------------------------------------------------------------
    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            self._on_event(message.get("method", ""), message.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.problems.append(ConsoleProblem("exception", exc.get("description") or details.get("text", ""),
                                                details.get("url", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.problems.append(ConsoleProblem("console", text))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.problems.append(ConsoleProblem(entry.get("source", "log"), entry.get("text", ""),
                                                    entry.get("url", "")))
        for waiter in list(self._waiters):
            if waiter[0] == method and not waiter[1].done():
                waiter[1].set_result(params)
                self._waiters.remove(waiter)

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def _expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, future))
        return future

    # -- what tests use ----------------------------------------------------------------------
    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Load ``url`` and wait for its load event."""
        loaded = self._expect("Page.loadEventFired")
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def reload(self, timeout: float = 30.0) -> None:
        loaded = self._expect("Page.loadEventFired")
        await self.send("Page.reload")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited); JsError if it throws."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                      "returnByValue": True, "userGesture": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise JsError(details.get("exception", {}).get("description") or details.get("text", "error"))
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, what: str | None = None) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        end = time.monotonic() + timeout
        value = None
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > end:
                problems = "".join(f"\n  {p}" for p in self.problems)
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what or expression}; "
                                     f"last value {value!r}; page problems:{problems or ' none'}")
            await asyncio.sleep(0.1)

    async def call(self, function: str, *args: Any) -> Any:
        """``(function)(...args)`` in the page, the arguments passed as JSON (no quoting to get wrong)."""
        return await self.evaluate(f"({function})(...{json.dumps(list(args))})")

    async def click(self, selector: str) -> None:
        await self.call("(s) => { const n = document.querySelector(s); if (!n) throw new Error('no ' + s); n.click(); }",
                        selector)

    async def fill(self, selector: str, text: str) -> None:
        await self.call("(s, t) => { const n = document.querySelector(s); if (!n) throw new Error('no ' + s);"
                        " n.value = t; n.dispatchEvent(new Event('input', {bubbles: true})); }", selector, text)

    async def text(self, selector: str) -> str | None:
        return await self.call("(s) => { const n = document.querySelector(s); return n && n.textContent; }",
                               selector)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def take_problems(self) -> list[ConsoleProblem]:
        """The problems seen so far, forgetting them (for a step that expects some)."""
        taken, self.problems = self.problems, []
        return taken
