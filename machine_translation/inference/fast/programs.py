"""The encoder and the decoding step compiled ahead of time: faster translation
on a CPU.

A decoding step in eager PyTorch is about 170 small operations, each dispatched from
Python; at one sentence at a time their overhead, not the arithmetic, sets the speed.
AOTInductor compiles a model's programs into shared libraries once (fusing the
small operations into a few C++ kernels, with the linear layers' weights
prepacked), and a later process loads those packages (a few seconds, with the
import of the compiler's runtime), as CTranslate2 converts a model once. Three
programs make a search (:func:`programs`): the encoder (two in fp32: for short
sources and for longer ones), the first decoding step
(which computes the source's keys and values) and the later steps, built twice:
for many rows, and for few (:data:`FEW_ROWS`, e.g. one sentence at a time), whose
products are kernels of their own (in int8: int8 weights, bf16 inputs); in bf16
and fp32 the first step is built a second time for one sentence, the same way.
The load time makes it worth it for long inputs and long-lived processes, not for
a few sentences; speeds are in ``bench/README.md``.

What the compiled programs are (their names, the modules they are exported from,
their example inputs and dynamic shapes) is here, and the builder
(``packages.py``), the loader (``compiled_model.py``) and the tests all go through
it; the int8 variants live in ``int8_programs.py``.

Each program is exported from a module of ``exported_modules.py``, a function of
explicit tensors: a later step writes the new positions' keys and values into the
cache buffers it is given, and chooses there greedy search's next tokens or beam
search's next beams.

A package holds the weights: it belongs to one model, so its name carries a
fingerprint of the weights and of the code (:func:`package_path`). A later step is
built for a number of hypotheses per sentence: one for greedy search, the beam
size for beam search, whose beams of a sentence then share one row of source keys
and values, as in the eager decoder. Sizes a program was not built for (e.g. very
long sources) run eagerly. Needs a C++ compiler to build; CPU only.

Shapes: ``b`` rows, ``h`` heads, ``s`` cached target positions, ``s_src`` source
positions, ``d_h`` head width, ``v`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from encoder_transformer.scaled_dot_product import (
    CPU_MATH_KERNEL_MAX_KEYS,
    DECODING_STEP_MAX_QUERIES,
)
from machine_translation.inference.fast.exported_modules import (
    Encoding,
    FirstStep,
    later_step,
)
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.devices import cpu_has_avx2

# Bounds the exported step is built for: the most sentences in a batch, and the
# fewest positions a self-attention buffer may have (the exporter's own bound).
MOST_SOURCES, SMALLEST_CAPACITY = 4096, 3

# A later step of at most this many rows (hypotheses) runs a program of its own
# (:func:`few_rows_program`), whose matrix products are Inductor's C++ kernels,
# generated and autotuned for few rows, instead of oneDNN's: for one row, a oneDNN
# product's fixed cost is most of its time. Measured on this project's CPU
# (``bench/few_rows_steps.py``, bf16, the step program alone, two threads, µs):
# 1 row 186 against oneDNN's 477, 5 rows 400 against 553, 8 rows 959 against 579.
FEW_ROWS = 5

# The first step of one sentence (one row, and the source's few tokens through the
# cross-attention's key and value products) runs a program of its own built the
# same way (:data:`ONE_SENTENCE_FIRST_STEP`). Measured (bf16, the tiny Multi30K
# model, a Zen 4 EPYC, one thread): alone, sources of 6-20 tokens, 159-265 µs
# against oneDNN's 666-750; in the toolkit 0.3 ms a sentence against 1.3-1.5
# (``bench/sentence_time.py``).
ONE_SENTENCE_FIRST_STEP = "first_step_few"


def step_program(beams: int) -> str:
    """The name of the decoding step's program for ``beams`` hypotheses a sentence."""
    return f"step_beams{beams}"


def program_beams(program: str) -> int:
    """The hypotheses a sentence of a later step's ``program``.

    >>> program_beams(step_program(5)), program_beams(few_rows_program(1))
    (5, 1)
    """
    return int(program.removeprefix("step_beams").removesuffix("_few"))


def few_sources(beams: int) -> int:
    """The most sentences whose step, at ``beams`` hypotheses each, has few rows."""
    return FEW_ROWS // beams


def few_rows_program(beams: int) -> str:
    """The name of the step's program for at most :func:`few_sources` sentences."""
    return f"step_beams{beams}_few"


def programs(beam_sizes: Sequence[int], precision: str = "fp32") -> list[str]:
    """The programs that translating with ``beam_sizes`` (1 = greedy) runs in
    ``precision``. In int8 the few-rows steps are weight-only (int8 weights, bf16
    inputs: ``int8_programs``), built where Inductor has vector kernels for them
    (x86 with AVX2 or AVX-512; bf16 need not be native: they compute in fp32);
    elsewhere int8 steps of any size are oneDNN's int8 products."""
    few_rows = precision != "int8" or cpu_has_avx2()
    names = [*encoder_programs(precision), "first_step"]
    if precision != "int8":  # (int8 few-rows programs are later steps only)
        names.append(ONE_SENTENCE_FIRST_STEP)
    for beams in sorted(set(beam_sizes)):
        names.append(step_program(beams))
        if few_rows and few_sources(beams) > 0:
            names.append(few_rows_program(beams))
    return names


def encoder_programs(precision: str) -> list[str]:
    """The encoder's programs in ``precision``: one in bf16; in fp32 (and int8,
    whose attention is fp32) a second one for short sources, whose attention
    takes the other way (:func:`encoder_lengths`)."""
    return ["encoder"] if precision == "bf16" else ["short_encoder", "encoder"]


def encoder_lengths(
    model: Seq2SeqTransformer, precision: str, program: str = "encoder"
) -> tuple[int, int]:
    """The shortest and longest sources the encoder's ``program`` takes.

    Within them the encoder's attention takes one way
    (``encoder_transformer.scaled_dot_product``): in fp32 (and int8), up to 16
    queries are multiplied out (``short_encoder``) and more go to SDPA
    (``encoder``); in bf16, SDPA's kernel changes beyond 256 keys.
    Other lengths are encoded eagerly, and so is a one-token source in fp32: with
    shared key/value heads (GQA) the exporter cannot size the written-out
    attention's result for a length that may be 1.
    """
    longest = model.config.max_positions
    if precision == "bf16":
        return 1, min(longest, CPU_MATH_KERNEL_MAX_KEYS)
    if program == "short_encoder":
        return 2, min(longest, DECODING_STEP_MAX_QUERIES)
    return DECODING_STEP_MAX_QUERIES + 1, longest


# The example sizes an export traces with (any in the ranges below would do).
SOURCES, TARGET_LENGTH, CAPACITY, SOURCE_LENGTH = 3, 5, 9, 7


class ProgramInputs(NamedTuple):
    """What ``torch.export`` needs to export a program: the module, example
    inputs, and the dynamic dimensions of each input."""

    module: nn.Module
    example: tuple
    dims: tuple


def export_program(
    model: Seq2SeqTransformer, program: str
) -> torch.export.ExportedProgram:
    """``program`` (one of :func:`programs`) of ``model``, on the CPU in its
    precision, exported for every size that varies: sentences, source and target
    lengths, cache capacities (the hypotheses per sentence are the program's)."""
    module, example, dims = program_inputs(model, program)
    return torch.export.export(module, example, dynamic_shapes=dims)


def program_inputs(model: Seq2SeqTransformer, program: str) -> ProgramInputs:
    """The module, example inputs and dynamic dimensions of ``program``."""
    if program in ("encoder", "short_encoder"):
        return encoder_inputs(model, program)
    if program in ("first_step", ONE_SENTENCE_FIRST_STEP):
        return first_step_inputs(model, one_sentence=program != "first_step")
    return later_step_inputs(model, program_beams(program), program.endswith("_few"))


def sentences_dim(most: int = MOST_SOURCES) -> torch.export.Dim:
    return torch.export.Dim("sources", min=1, max=most)


def encoder_inputs(model: Seq2SeqTransformer, program: str) -> ProgramInputs:
    """:class:`Encoding` for the source lengths of :func:`encoder_lengths`."""
    dtype = next(model.parameters()).dtype
    precision = "fp32" if dtype == torch.float32 else "bf16"
    shortest, longest = encoder_lengths(model, precision, program)
    length = min(shortest + 2, longest)
    source_ids = torch.randint(3, model.config.vocab_size, (SOURCES, length))
    source_mask = torch.ones(SOURCES, length, dtype=torch.bool)
    # DYNAMIC, not a named Dim: with GQA the written-out attention's reshape leaves
    # a size relation the exporter cannot prove, and DYNAMIC lets it check that at
    # run time (a named Dim fails the export).
    source = torch.export.Dim.DYNAMIC(min=shortest, max=longest)
    dims = {0: sentences_dim(), 1: source}
    return ProgramInputs(Encoding(model), (source_ids, source_mask), (dims, dims))


def first_step_inputs(
    model: Seq2SeqTransformer, one_sentence: bool = False
) -> ProgramInputs:
    """:class:`FirstStep`, one row per sentence; ``one_sentence``: for one only
    (a size, not a dimension)."""
    config, dtype = model.config, next(model.parameters()).dtype
    sources = 1 if one_sentence else SOURCES
    example = (
        torch.randint(3, config.vocab_size, (sources, 1)),
        torch.randn(sources, SOURCE_LENGTH, config.d_model).to(dtype),
        torch.ones(sources, SOURCE_LENGTH, dtype=torch.bool),
    )
    sentences = None if one_sentence else sentences_dim()
    source = torch.export.Dim("source", min=1, max=config.max_positions)
    dims = (
        dynamic({0: sentences}),
        dynamic({0: sentences, 1: source}),
        dynamic({0: sentences, 1: source}),
    )
    return ProgramInputs(FirstStep(model), example, dims)


def later_step_inputs(
    model: Seq2SeqTransformer, beams: int, few: bool = False
) -> ProgramInputs:
    """:func:`later_step` for ``beams`` hypotheses per sentence; ``few``: for
    at most :func:`few_sources` sentences (one: a size, not a dimension)."""
    most = few_sources(beams) if few else MOST_SOURCES
    sources = min(SOURCES, most)
    config = model.config
    kv_heads = config.n_kv_heads or config.n_heads
    width = config.d_model // config.n_heads
    n = len(model.decoder.blocks)
    # Caches on a CPU are fp32 (``kv_cache.storage_dtype``).
    own = (beams * sources, kv_heads, CAPACITY, width)
    cross = (sources, kv_heads, SOURCE_LENGTH + 1, width)
    example = (
        torch.randint(3, config.vocab_size, (beams * sources, 1)),
        torch.ones(sources, SOURCE_LENGTH, dtype=torch.bool),
        torch.empty(()).expand(TARGET_LENGTH),
        tuple(
            [torch.randn(own) for _ in range(2 * n)]
            + [torch.randn(cross) for _ in range(2 * n)]
        ),
    )
    sentences = sentences_dim(most) if most > 1 else None
    rows = beams * sentences if beams > 1 and sentences is not None else sentences
    longest = 4 * config.max_positions  # cache buffers grow by doubling
    source = torch.export.Dim("source", min=1, max=config.max_positions)
    target = torch.export.Dim("target", min=1, max=config.max_positions - 1)
    own_capacity = torch.export.Dim("capacity", min=SMALLEST_CAPACITY, max=longest)
    cross_capacity = torch.export.Dim("source_capacity", min=1, max=longest)
    own_dims = dynamic({0: rows, 2: own_capacity})
    cross_dims = dynamic({0: sentences, 2: cross_capacity})
    dims = (
        dynamic({0: rows}),
        dynamic({0: sentences, 1: source}),
        {0: target},
        tuple([own_dims] * (2 * n) + [cross_dims] * (2 * n)),
    )
    if beams == 1:  # greedy search's: the tokens never chosen (PAD, BOS)
        example += (torch.tensor([0, 1]),)
        dims += ({},)
    else:  # beam search's: scores, required tokens, special tokens
        example += (
            torch.randn(sources, beams),
            torch.full((sources,), -1),
            torch.tensor([2, 0, 1]),
        )
        dims += (dynamic({0: sentences}), dynamic({0: sentences}), {})
    return ProgramInputs(later_step(model, beams), example, dims)


def dynamic(dims: dict) -> dict:
    """``dims`` without the axes of a fixed size (``None``)."""
    return {axis: dim for axis, dim in dims.items() if dim is not None}
