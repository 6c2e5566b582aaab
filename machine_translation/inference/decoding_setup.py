"""How a command decodes: the eager model here, or, when asked, the fast CPU path.

This is the one place that chooses. ``translate``, ``evaluate``, ``serve`` and the
benchmarks call :func:`batch_decoder`; training's validation decodes its own model
eagerly (``InProcess``) and never imports the fast path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from machine_translation.inference import fast
from machine_translation.inference.decoders import BatchDecoder, InProcess
from machine_translation.inference.int8 import Int8Seq2Seq
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.devices import for_inference


def batch_decoder(
    model: Seq2SeqTransformer,
    precision: str,
    *,
    workers: int = 1,
    compiled: bool = False,
    directory: Path | None = None,
    beam_sizes: Sequence[int] = (1,),
) -> BatchDecoder:
    """The decoder of ``model`` for translating many batches.

    Args:
        model: A translation model as loaded (converted in place for inference).
        precision: A resolved precision, ``bf16``, ``fp16``, ``fp32``, or ``int8``
            (CPU: a new model with int8 linear layers is built from ``model``).
        workers: Batches decoded at once: threads eagerly; with ``compiled``,
            processes (a compiled program holds Python's interpreter lock).
        compiled: Decode with programs compiled ahead of time (CPU only; see
            :func:`machine_translation.inference.fast.prepare`).
        directory: Where compiled programs are kept (needed with ``compiled``).
        beam_sizes: The searches to prepare compiled programs for (1 = greedy).

    Raises:
        ValueError: bad ``workers``, or ``compiled`` where it cannot run.
        CompileError: ``compiled`` and a program could not be compiled.
    """
    if precision == "int8" and not compiled:
        return InProcess(Int8Seq2Seq(for_inference(model, "fp32")), workers)
    if not compiled:
        return InProcess(for_inference(model, precision), workers)
    if directory is None:
        raise ValueError("compiled decoding needs a directory for its programs")
    return fast.prepare(model, precision, directory, beam_sizes, workers)
