"""Async plumbing between the engine's output streams and a response: merge, last item, disconnects.

Closing (or cancelling) what these return closes the engine streams they read, and closing an engine
stream before it finished aborts its engine request, so its KV blocks are freed within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


async def merge_streams(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they arrive, tagged with the iterator's position.

    Closing or cancelling the merged iterator closes every source (so engine requests are aborted).
    """
    if len(streams) == 1:
        source = streams[0]
        try:
            async for item in source:
                yield 0, item
        finally:
            await source.aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    finished = object()

    async def pump(i: int, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait((i, item, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, None, exc))
        else:
            queue.put_nowait((i, finished, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is finished:
                remaining -= 1
                continue
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)


async def last_items(streams: Sequence[AsyncIterator[T]]) -> list[T]:
    """The last item of each stream (a request's final output). If one stream fails, the others are
    closed (their engine requests aborted) and the error propagates."""
    last: list[T | None] = [None] * len(streams)
    async for i, item in merge_streams(streams):
        last[i] = item
    assert all(item is not None for item in last), "an engine stream ended without output"
    return last  # type: ignore[return-value]


async def _wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it (aborting its engine requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
