"""Micro-batching: queries of concurrent requests share one model call.

A request submits its queries and awaits their results. One worker task takes the first waiting query, then
keeps collecting until ``max_batch`` queries are waiting or ``max_wait_ms`` have passed since it took the first,
and runs the whole batch in a worker thread (the event loop keeps accepting requests meanwhile). A batch
that fails is retried query by query, so one bad query cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """Batches run and queries answered since start."""

    batches: int = 0
    queries: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def add(self, size: int) -> None:
        self.batches += 1
        self.queries += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def to_json(self) -> dict[str, Any]:
        mean = self.queries / self.batches if self.batches else 0.0
        return {"batches": self.batches, "queries": self.queries, "mean_batch": round(mean, 3), "largest": self.largest}


class MicroBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` (one result per item, in order) on batches of submitted items."""

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_batch: int = 16, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, items: list[T]) -> list[R]:
        """The results of ``items`` (they may share batches with other requests' items)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run(batch)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, future) for item, future in batch if not future.done()]  # a request cancelled meanwhile
        if not live:
            return
        self.stats.add(len(live))
        try:
            results = await asyncio.to_thread(self.run, [item for item, _ in live])
        except Exception as error:
            if len(live) == 1:
                if not live[0][1].done():
                    live[0][1].set_exception(error)
                return
            for one in live:  # find the failing query; the others still get their answers
                await self._run([one])
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)
