"""The one way tests wait: poll until something holds, and fail saying what did not."""

from __future__ import annotations

import asyncio
import inspect
import time


def wait_until(fn, timeout: float = 30.0, what: str = "the condition",
               interval: float = 0.1):
    """Calls fn() until it returns something truthy, and returns that; AssertionError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(fn, timeout: float = 30.0, what: str = "the condition",
                           interval: float = 0.05):
    """wait_until inside an event loop; fn may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
