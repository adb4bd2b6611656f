"""deadline.within: asyncio.timeout's outcomes (the runtime's agent deadline and its bound around
each provider call use it instead, for cost), checked case by case against asyncio.timeout itself."""

from __future__ import annotations

import asyncio

import pytest

from j1mskyd.deadline import within


class Late(Exception):
    pass


async def _forever(started: list[str] | None = None) -> None:
    if started is not None:
        started.append("started")
    await asyncio.sleep(3600)


async def test_the_time_running_out_cancels_the_awaitable_and_raises_the_error():
    cancelled = asyncio.Event()

    async def body() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await within(0.01, body())
    assert cancelled.is_set()
    with pytest.raises(Late):
        await within(0.01, _forever(), lambda: Late("no answer"))
    assert asyncio.current_task().cancelling() == 0  # its cancel request was taken back


async def test_a_quick_answer_is_returned_and_the_timer_never_fires_afterwards():
    async def quick() -> int:
        return 7

    assert await within(0.01, quick()) == 7
    await asyncio.sleep(0.1)  # past the limit: a timer left armed would cancel this sleep
    assert asyncio.current_task().cancelling() == 0


async def test_an_error_of_the_awaitable_passes_unchanged():
    async def fails() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await within(60, fails())


async def test_a_cancel_from_outside_passes_as_a_cancel():
    started: list[str] = []
    task = asyncio.ensure_future(within(3600, _forever(started)))
    while not started:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_from_outside_after_the_limit_fired_still_passes_as_a_cancel():
    # Both asked to cancel: as with asyncio.timeout, the outside request wins (no TimeoutError).
    async def outcome(limit_factory, seen: list[str]) -> None:
        async def body() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                asyncio.current_task().cancel()  # the outside request, made while the limit's is handled
                raise

        try:
            await limit_factory(body())
        except TimeoutError:
            seen.append("timeout")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def with_timeout(coro):
        async with asyncio.timeout(0.01):
            await coro

    ours: list[str] = []
    theirs: list[str] = []
    for factory, seen in ((lambda coro: within(0.01, coro), ours), (with_timeout, theirs)):
        task = asyncio.ensure_future(outcome(factory, seen))
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ours == theirs == ["cancelled"]


async def test_an_awaitable_that_swallows_the_cancel_returns_its_value():
    async def stubborn() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "kept going"
        return "slept"

    assert await within(0.01, stubborn()) == "kept going"
    assert asyncio.current_task().cancelling() == 0


async def test_nested_limits_each_raise_their_own_error():
    async def inner() -> str:
        try:
            await within(0.01, _forever(), lambda: Late("inner"))
        except Late:
            return "inner expired"
        return "no"

    assert await within(3600, inner()) == "inner expired"
    with pytest.raises(TimeoutError):  # the outer one expires around an inner one that would not
        await within(0.01, within(3600, _forever(), lambda: Late("inner")))


async def test_zero_or_less_expires_at_once():
    with pytest.raises(TimeoutError):
        await within(0, _forever())
