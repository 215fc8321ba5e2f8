"""Micro-batching: merge the requests that arrive while the model is busy into one model call.

One worker thread runs the pipeline, so model calls never compete for the CPU cores. Requests
wait in a FIFO queue; when the worker is free it takes the queued requests in arrival order up to
``max_batch_size`` (query, document) pairs, waiting up to ``max_wait_ms`` for more if the queue
runs dry while more requests are arriving, scores them together and hands each request its
own result. A request larger than
the batch limit runs alone. If a merged call fails, each of its requests is retried alone, so a
request that breaks the model fails by itself.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rerank.types import Candidates, StageCost


class QueueFullError(Exception):
    """The service already holds ``max_queue`` waiting requests."""


class ShuttingDownError(Exception):
    """The batcher stopped taking requests (the server is shutting down)."""


@dataclass(eq=False)
class _Job:
    candidates: Candidates
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    arrived: float = 0.0
    """When the request arrived (``perf_counter``), which its latency budget counts from."""
    budget_ms: float | None = None

    @property
    def pairs(self) -> int:
        return len(self.candidates)


@dataclass
class BatchStats:
    """What one model call held, for metrics: requests, pairs, queue wait and model seconds."""

    requests: int
    pairs: int
    waits: list[float]
    model_seconds: float


class MicroBatcher:
    """Score :class:`Candidates` from concurrent requests with shared model calls.

    ``run`` is the pipeline (a batch of candidates in, re-ranked candidates out). ``on_batch``
    is called with each call's :class:`BatchStats` (from the event loop). ``arriving`` counts
    requests accepted but not queued yet (their bodies still being read or parsed): the batcher
    waits for more only while some are on their way, so a lone request never waits.

    ``planner`` (for a latency budget) is called in the event loop with the next request and those
    queued behind it, and returns the stage to run it with and a trace entry saying what it
    chose; requests then run one per model call (their costs were measured that way).
    """

    def __init__(self, run: Callable[[Sequence[Candidates]], list[Candidates]], *, batching: bool = True,
                 max_batch_size: int = 512, max_wait_ms: float = 2.0, max_queue: int = 256,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 arriving: Callable[[], int] | None = None,
                 planner: Callable[[_Job, list[_Job]], tuple[Callable, StageCost]] | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.run = run
        self.planner = planner
        self.arriving = arriving
        self.batching = batching and planner is None
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        # A model's worker thread outlives the batcher when its owner passes one in (a model that is
        # unloaded and loaded again keeps its thread, and the memory allocators' per-thread state).
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-model")
        self._worker: asyncio.Task | None = None
        self._closing = False

    @property
    def queued(self) -> int:
        """Requests waiting for the model."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="rerank-batcher")

    def _event(self) -> asyncio.Event:
        """The event that a request has arrived (made when the batcher starts)."""
        if self._arrived is None:
            raise RuntimeError("the batcher has not been started")
        return self._arrived

    async def stop(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker thread."""
        self._closing = True
        if self._arrived is not None:
            self._event().set()
        if self._worker is not None:
            await self._worker
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    async def submit(self, candidates: Candidates, *, arrived: float | None = None,
                     budget_ms: float | None = None) -> Candidates:
        """Queue one request's candidates and wait for them re-ranked. Cancelling the wait (a
        timeout) drops the request from the queue if the model has not taken it yet.
        ``arrived`` and ``budget_ms``: when the request came and its latency budget (for the planner)."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(f"{len(self._queue)} requests are already waiting (max_queue={self.max_queue})")
        job = _Job(candidates, asyncio.get_running_loop().create_future(), budget_ms=budget_ms)
        job.arrived = job.enqueued if arrived is None else arrived
        self._queue.append(job)
        self._event().set()
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        while not self._queue:
            if self._closing:
                return []
            self._event().clear()
            await self._event().wait()
        batch = [self._queue.popleft()]
        if not self.batching:
            return batch
        pairs = batch[0].pairs
        deadline = time.perf_counter() + self.max_wait
        while pairs < self.max_batch_size:
            if not self._queue:
                left = deadline - time.perf_counter()
                if left <= 0 or self._closing or (self.arriving is not None and self.arriving() == 0):
                    break
                self._event().clear()
                try:
                    await asyncio.wait_for(self._event().wait(), left)
                except asyncio.TimeoutError:
                    break
                continue
            if pairs + self._queue[0].pairs > self.max_batch_size:
                break
            job = self._queue.popleft()
            batch.append(job)
            pairs += job.pairs
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [job for job in await self._next_batch() if not job.future.done()]
            if not batch:
                if self._closing and not self._queue:
                    return
                continue
            run, note = self.planner(batch[0], list(self._queue)) if self.planner is not None else (None, None)
            began = time.perf_counter()
            waits = [began - job.enqueued for job in batch]
            outcomes = await loop.run_in_executor(self._executor, self._score, [job.candidates for job in batch], run)
            seconds = time.perf_counter() - began
            for job, outcome in zip(batch, outcomes):
                if job.future.done():  # timed out meanwhile
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    if note is not None:
                        outcome.trace.append(note)
                    job.future.set_result(outcome)
            if self.on_batch is not None:
                self.on_batch(BatchStats(len(batch), sum(job.pairs for job in batch), waits, seconds))

    def _score(self, batch: list[Candidates], run: Callable | None = None) -> list[Candidates | Exception]:
        run = run or self.run
        try:
            return list(run(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        outcomes: list[Candidates | Exception] = []
        for candidates in batch:
            try:
                outcomes.extend(run([candidates]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
