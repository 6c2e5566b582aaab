"""Decoding on worker processes: compiled programs on several cores at once.

Several batches can be decoded at once on threads (``inference.decoders.InProcess``)
because PyTorch's kernels release Python's interpreter lock. A compiled program does
not: AOTInductor's Python binding holds the lock while it runs, so threads calling
compiled programs only take turns. Processes have a lock each. Every worker process
receives a copy of the model, loads its compiled packages (built beforehand by the
parent), runs on its own share of the cores, and decodes the batches sent to it;
only token ids travel between the processes. This is CTranslate2's
``inter_threads``, with processes for threads.

A worker starts in a few seconds (importing torch, loading the packages), once per
command: it pays off over a file, not for one sentence.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing.synchronize import Semaphore
from pathlib import Path
from typing import Any

import torch

from machine_translation.inference.fast.compiled_model import CompiledModel
from machine_translation.inference.fast.packages import compiled_packages
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.allocator import keep_freed_memory

# In a worker process: its own model with compiled programs (set by start_worker).
worker_model: CompiledModel | None = None


def start_worker(
    model: Seq2SeqTransformer,
    precision: str,
    directory: Path,
    beam_sizes: Sequence[int],
    threads: int,
    loaded: Semaphore,
) -> None:
    """Runs in each new worker process: its threads, memory use, compiled model."""
    global worker_model
    torch.set_num_threads(threads)
    keep_freed_memory()  # as the commands that start it
    worker_model = CompiledModel(model, precision, directory, beam_sizes)
    loaded.release()  # one more worker ready


def run_on_worker_model(function: Callable, options: dict[str, Any], item: Any) -> Any:
    """Runs in a worker process: ``function(model, item, **options)``."""
    return function(worker_model, item, **options)


class DecodingProcesses:
    """Worker processes, each decoding with its own compiled copy of a model.

    The missing packages are compiled first, here, so that the workers never
    compile one at once; the workers then start, and load them. Close them with
    :meth:`close` (or a ``with`` block); they also end with this process. As with
    any process pool started by "spawn", a script that uses one must guard its own
    start (``if __name__ == "__main__":``), which each worker imports again.

    Args:
        model: A translation model as loaded, on the CPU (each worker gets a copy).
        precision: ``bf16``, ``fp32`` or ``int8`` (int8 linear layers).
        directory: Where the compiled packages are.
        beam_sizes: The searches the workers run (1 = greedy).
        workers: Processes, each decoding one batch at a time.
        threads: PyTorch's threads in each process.

    Raises:
        ValueError: the model is not on the CPU, or not covered by the compiled
            programs.
        CompileError: compiling failed.
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        precision: str,
        directory: Path,
        beam_sizes: Sequence[int],
        workers: int,
        threads: int,
    ) -> None:
        compiled_packages(model, directory, precision, beam_sizes)
        # "spawn": a forked copy of a process that has started OpenMP's threads
        # can hang in its first parallel region.
        context = multiprocessing.get_context("spawn")
        self.workers, self.loaded = workers, context.Semaphore(0)
        self.pool = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=start_worker,
            # A copy: a worker receives it when it starts, which a pool may delay.
            initargs=(
                copy.deepcopy(model),
                precision,
                directory,
                tuple(beam_sizes),
                threads,
                self.loaded,
            ),
        )
        # Start every worker now, to load while this process goes on: the pool
        # starts one more process for each call waiting while none is idle.
        for _ in range(workers):
            self.pool.submit(os.getpid)

    def wait_until_loaded(self, timeout: float = 600.0) -> None:
        """Returns once every worker has loaded its model (e.g. before timing).

        Raises:
            RuntimeError: not all had after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        for _ in range(self.workers):
            if not self.loaded.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"decoding workers not loaded after {timeout} s")
        for _ in range(self.workers):  # still loaded: a later wait returns at once
            self.loaded.release()

    def map(self, function: Callable, items: Sequence, **options: Any) -> list:
        """``[function(model, item, **options) for item in items]``, in order.

        Each call runs on a worker, on its model; ``function`` must be importable
        by name (defined at a module's top level) and its results picklable.

        Raises:
            RuntimeError: a worker died (its error is on standard error).
        """
        # Items travel in chunks, a quarter of a worker's share each: sent one by
        # one, the pool's round trip cost about 1 ms a sentence one at a time
        # (greedy: 317 sentences/s on two workers, 432 in chunks of 16).
        chunk = max(1, len(items) // (4 * self.workers))
        try:
            run = partial(run_on_worker_model, function, options)
            return list(self.pool.map(run, items, chunksize=chunk))
        except BrokenProcessPool as error:
            raise RuntimeError(
                "a decoding worker process failed (its error is printed above)"
            ) from error

    def close(self) -> None:
        """Ends the worker processes."""
        self.pool.shutdown()

    def __enter__(self) -> DecodingProcesses:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()
