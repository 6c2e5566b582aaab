"""The one call that prepares a model for fast CPU decoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from machine_translation.inference.decoders import BatchDecoder, InProcess
from machine_translation.inference.fast.compiled_model import CompiledModel
from machine_translation.inference.fast.processes import DecodingProcesses
from machine_translation.model import Seq2SeqTransformer


def prepare(
    model: Seq2SeqTransformer,
    precision: str,
    directory: Path,
    beam_sizes: Sequence[int] = (1,),
    workers: int = 1,
) -> BatchDecoder:
    """A decoder of ``model`` running compiled programs on the CPU.

    The programs (encoder, first step, later steps per beam size) are compiled
    into ``directory`` once per model, then loaded. One worker decodes here, one
    batch at a time; several are processes, each with its copy of the model and
    PyTorch's thread count of this process (share the cores first:
    ``runtime.devices.share_cpu_threads``). Close the decoder when done.

    Args:
        model: A translation model as loaded, on the CPU.
        precision: ``bf16``, ``fp32`` or ``int8`` (int8 linear layers).
        directory: Where the compiled packages are kept.
        beam_sizes: The searches to prepare (1 = greedy).
        workers: Batches decoded at once.

    Raises:
        ValueError: the model is not on the CPU, or not covered by the programs.
        CompileError: compiling failed (e.g. no C++ compiler).
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")
    if workers == 1:
        return InProcess(CompiledModel(model, precision, directory, beam_sizes))
    return DecodingProcesses(
        model, precision, directory, beam_sizes, workers, torch.get_num_threads()
    )
