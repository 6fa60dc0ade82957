"""Continuous batching: concurrent requests merged into stage calls while the stages are busy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .batches import RepairedBatch, ScoredBatch, SeqBatch
from .errors import Unavailable


@dataclass
class _Job:
    batch: SeqBatch
    repair: bool
    future: asyncio.Future


class ContinuousBatcher:
    """Merges concurrent requests into stage calls, batching while busy: up to ``concurrency``
    batches run at once, and each one takes every request queued by the time it starts (up to
    ``max_batch`` requests). Nothing waits for a batch to fill: an idle server answers at once,
    a busy one merges what piled up during the previous call.

    ``run(merged, repair)`` runs the stages on one merged batch and returns a ScoredBatch, or a
    RepairedBatch when ``repair`` is true (any request in the batch asked for a repair);
    ``on_batch(n)``, if given, is told how many requests each call merged.
    """

    def __init__(self, run: Callable[[SeqBatch, bool], Awaitable[ScoredBatch | RepairedBatch]], *,
                 max_batch: int = 64, concurrency: int = 1, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or concurrency < 1:
            raise ValueError(f"max_batch and concurrency must be >= 1, got {max_batch}, {concurrency}")
        self._run = run
        self._on_batch = on_batch
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._queue: asyncio.Queue[_Job] | None = None
        self._workers: list[asyncio.Task] = []

    async def submit(self, batch: SeqBatch, repair: bool = False) -> ScoredBatch | RepairedBatch:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._workers = [w for w in self._workers if not w.done()]  # a cancelled worker is replaced
        while len(self._workers) < self.concurrency:
            self._workers.append(loop.create_task(self._drain()))
        fut = loop.create_future()
        self._queue.put_nowait(_Job(batch, repair, fut))
        return await fut

    async def _drain(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # cancelled by the client meanwhile
            if not jobs:
                continue
            merged, bounds = SeqBatch.concat([j.batch for j in jobs])
            if self._on_batch is not None:
                self._on_batch(len(jobs))
            try:
                parts = (await self._run(merged, any(j.repair for j in jobs))).split(bounds)
            except BaseException as exc:  # noqa: BLE001 - handed to every caller
                cancelled = isinstance(exc, asyncio.CancelledError)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(Unavailable("the batch was cancelled: retry") if cancelled else exc)
                if cancelled:  # this worker ends; the next submit() starts another
                    raise
                continue
            for j, part in zip(jobs, parts):
                if not j.future.done():
                    j.future.set_result(part if j.repair or not isinstance(part, RepairedBatch) else part.scored)

    def close(self) -> None:
        """Stop the workers. Requests in a running batch and requests still queued fail with
        UNAVAILABLE (their clients may retry elsewhere) rather than wait for their deadline."""
        for w in self._workers:
            w.cancel()
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Unavailable("the server is shutting down: retry"))
        self._queue, self._workers = None, []

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the workers have stopped."""
        workers = self._workers
        self.close()
        await asyncio.gather(*workers, return_exceptions=True)
