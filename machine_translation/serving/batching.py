"""Dynamic batching: concurrent requests decoded together, by one worker.

A decoding step costs nearly the same for one sentence as for thirty on a CPU (the
step is many small operations), so requests that arrive together are translated
together. :class:`DynamicBatcher` queues each request's sentences; one worker
thread takes the oldest request, adds every request already waiting and, for at most
``max_wait`` seconds, those that arrive, until ``max_tokens`` source tokens are
gathered; then it decodes them as one call. While it decodes, new requests queue
up and form the next batch, so under load batches fill without waiting.

The event loop only queues work and awaits futures: the model never runs on it, so
the server keeps accepting requests while a batch decodes. The worker is a thread of
the batcher's own (:meth:`~DynamicBatcher.start`) or the thread that calls
:meth:`~DynamicBatcher.work` (``serve``: the main thread, which decodes faster).
:meth:`~DynamicBatcher.close` lets the worker finish everything queued before it
stops (a graceful shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)
Result = TypeVar("Result")


@dataclass
class _Job:
    """One request's sentences (or one call to run) and where its answer goes."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    texts: list[str] = field(default_factory=list)
    call: Callable[[], Any] | None = None


_STOP = object()


@dataclass(frozen=True)
class BatchTotals:
    """What the worker has decoded since it started (for ``/health``); replaced
    whole after each batch, so another thread never reads half an update."""

    batches: int = 0
    requests: int = 0
    sentences: int = 0


class BatcherClosed(RuntimeError):
    """A request came after :meth:`DynamicBatcher.close`."""


class DynamicBatcher(Generic[Result]):
    """Gathers the sentences of concurrent requests into batches for one worker.

    Args:
        translate: Translates a list of sentences, one result per sentence, in order;
            runs on the worker only.
        count_tokens: A sentence's length in source tokens (for ``max_tokens``).
        max_wait: Seconds a batch waits for more requests after its first.
        max_tokens: Source tokens per batch at most (a larger request is a batch of
            its own).
    """

    def __init__(
        self,
        translate: Callable[[list[str]], list[Result]],
        count_tokens: Callable[[str], int],
        max_wait: float,
        max_tokens: int,
    ) -> None:
        self._translate, self._count_tokens = translate, count_tokens
        self.max_wait, self.max_tokens = max_wait, max_tokens
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self.work, name="batcher", daemon=True)
        self._closed = False
        self.totals = BatchTotals()
        # (requests, sentences, source tokens) of the most recent batches decoded
        self.batches: deque[tuple[int, int, int]] = deque(maxlen=1000)

    def start(self) -> None:
        """Starts a worker thread of its own (or call :meth:`work` on one)."""
        self._thread.start()

    async def translate(self, texts: list[str]) -> list[Result]:
        """The results of ``texts``, decoded in a batch with other requests'.

        Raises:
            BatcherClosed: the batcher is closed.
            Exception: whatever ``translate`` raised for the batch.
        """
        return await self._submit(texts=list(texts))

    async def run(self, call: Callable[[], Any]) -> Any:
        """Runs ``call()`` on the worker, between batches (model work that
        is not a translation, such as an alignment)."""
        return await self._submit(call=call)

    async def _submit(self, **work: Any) -> Any:
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), **work)
        self._queue.put(job)
        return await job.future

    def close(self, timeout: float | None = None) -> None:
        """Stops taking requests, decodes those queued, and ends the worker (its
        own thread, or :meth:`work` on the thread that called it)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def work(self) -> None:
        """Decodes batches on the calling thread until :meth:`close`.

        On a CPU, PyTorch's OpenMP threads serve the main thread best: beam search
        at batch 32 ran 1.48x as fast there as on another thread here
        (bench/README.md), so ``serve`` decodes on the main thread.
        """
        waiting: Any = None  # a job taken from the queue that did not fit a batch
        while True:
            job = waiting if waiting is not None else self._queue.get()
            waiting = None
            if job is _STOP:
                return
            if job.call is not None:
                self._answer([job], lambda call=job.call: [call()])
                continue
            batch, tokens = [job], self._tokens(job)
            deadline = time.monotonic() + self.max_wait
            while tokens < self.max_tokens:
                try:
                    following = self._queue.get(
                        timeout=max(0.0, deadline - time.monotonic())
                    )
                except queue.Empty:
                    break
                size = 0 if following is _STOP else self._tokens(following)
                if (
                    following is _STOP
                    or following.call
                    or tokens + size > self.max_tokens
                ):
                    waiting = following
                    break
                batch.append(following)
                tokens += size
            sentences = sum(len(j.texts) for j in batch)
            self.batches.append((len(batch), sentences, tokens))
            self.totals = BatchTotals(
                self.totals.batches + 1,
                self.totals.requests + len(batch),
                self.totals.sentences + sentences,
            )
            self._answer(batch, lambda batch=batch: self._decode(batch))

    def _tokens(self, job: _Job) -> int:
        return sum(self._count_tokens(text) for text in job.texts)

    def _decode(self, batch: list[_Job]) -> list[list[Result]]:
        texts = [text for job in batch for text in job.texts]
        results = self._translate(texts)
        answers, start = [], 0
        for job in batch:
            answers.append(results[start : start + len(job.texts)])
            start += len(job.texts)
        return answers

    def _answer(self, jobs: list[_Job], compute: Callable[[], list[Any]]) -> None:
        """Runs ``compute`` and hands each job its part (or the error) on its loop."""
        try:
            answers = compute()
        except Exception as error:  # every request of the batch learns it
            logger.exception("a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.loop.call_soon_threadsafe(_fail, job.future, error)
            return
        for job, answer in zip(jobs, answers, strict=True):
            job.loop.call_soon_threadsafe(_resolve, job.future, answer)


def _resolve(future: asyncio.Future, answer: Any) -> None:
    if not future.done():  # a client that left has cancelled its future
        future.set_result(answer)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
