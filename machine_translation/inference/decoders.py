"""What a search needs of a model, and where batches of searches run.

A search (greedy, beam, sampling) asks four things of a model, :class:`StepDecoder`:
its ``config``, ``encode``, ``new_cache`` and one cached ``decode_step``. The
:class:`~machine_translation.model.Seq2SeqTransformer` is one; the compiled programs
of :mod:`machine_translation.inference.fast` give another, so the searches never
know which they run on. Those programs can also choose greedy search's tokens and
beam search's next beams inside the step (:class:`GreedyStepDecoder`,
:class:`BeamStepDecoder`), which the searches then ask for.

Batches are handed to a :class:`BatchDecoder`, which runs a search function over
them and returns the results in order. :class:`InProcess` runs them here, one at a
time or several at once on threads (CTranslate2's ``inter_threads``): a decoding
step is many small operations, and two cores each running a whole batch wait less
for each other than both cores sharing every small operation. PyTorch's kernels
release Python's interpreter lock, so the threads do run in parallel; give each its
share of the cores (``runtime.devices.share_cpu_threads``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from decoder_transformer.cache import DecoderCache
from encoder_transformer.config import TransformerConfig
from machine_translation.inference.beam_choice import BeamChoice


class StepDecoder(Protocol):
    """A translation model as a search sees it (shapes as in ``model.py``)."""

    config: TransformerConfig

    def parameters(self) -> Iterator[nn.Parameter]:
        """The weights (their type tells whether to decode under autocast)."""
        ...

    def encode(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """``(b, s_src)`` ids and mask → ``(b, s_src, d)`` encoder states."""
        ...

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty decoder cache."""
        ...

    def decode_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """``(b, s_new)`` ids → ``(b, s_new, v)`` logits; extends ``cache``."""
        ...


@runtime_checkable
class GreedyStepDecoder(Protocol):
    """A model whose decoding step can end by choosing greedy search's next tokens
    (``greedy_choice.greedy_tokens``), so that they are not chosen in Python."""

    def decode_greedy_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
        forbidden: Tensor,
    ) -> Tensor | None:
        """``decode_step`` for ``(b, 1)`` ids, then ``greedy_tokens(logits,
        forbidden)``: ``(b,)`` tokens; None, with ``cache`` unchanged, where it
        cannot (then the search calls ``decode_step``)."""
        ...


@runtime_checkable
class BeamStepDecoder(Protocol):
    """A model whose decoding step can end by choosing beam search's next beams
    (``beam_choice.choose_beams``), so that they are not chosen op by op in Python."""

    def decode_beam_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
        scores: Tensor,
        required: Tensor | None,
        special: Tensor,
    ) -> BeamChoice | None:
        """``decode_step`` for ``(n · c, 1)`` ids, then ``choose_beams(logits,
        scores, required, special, c)``; None, with ``cache`` unchanged, where it
        cannot (then the search calls ``decode_step``)."""
        ...


class BatchDecoder(Protocol):
    """Runs ``function(model, batch, **options)`` over batches, in order."""

    def map(self, function: Callable, batches: Sequence, **options: Any) -> list:
        """The results of every batch, in the order of ``batches``."""
        ...

    def close(self) -> None:
        """Releases what the decoder holds (threads, processes)."""
        ...

    def __enter__(self) -> BatchDecoder: ...

    def __exit__(self, *exception: object) -> None: ...


class InProcess:
    """Decodes batches with ``model`` in this process: ``workers`` at once.

    Args:
        model: The model (a :class:`StepDecoder`), ready to decode.
        workers: Batches decoded at once, each on a thread of its own (the
            outputs are the same as with one).
    """

    def __init__(self, model: StepDecoder, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: need at least 1")
        self.model, self.workers = model, workers

    def map(self, function: Callable, batches: Sequence, **options: Any) -> list:
        search = partial(function, self.model, **options)
        if self.workers == 1:
            return [search(batch) for batch in batches]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(search, batches))

    def close(self) -> None:
        """Nothing to release: the threads end with each :meth:`map`."""

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()
