"""Small asyncio helpers shared by the long-running parts."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended.

    Unlike `task.cancel(); with suppress(CancelledError): await task`, this does not swallow a
    cancellation of the *caller* that arrives while it waits (that pattern eats it, and a job
    being stopped then runs on), and it retrieves the task's exception so none is reported as
    "never retrieved".
    """
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()
