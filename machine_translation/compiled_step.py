"""The encoder and the decoding step compiled ahead of time: faster translation
on a CPU.

A decoding step in eager PyTorch is about 170 small operations, each dispatched from
Python; at one sentence at a time their overhead, not the arithmetic, sets the speed.
AOTInductor compiles a model's programs into shared libraries once (fusing the
small operations into a few C++ kernels, with the linear layers' weights
prepacked), and a later process loads those packages (a few seconds, with the
import of the compiler's runtime), as CTranslate2 converts a model once. Three
programs make a search (:func:`programs`): the encoder, the first decoding step
(which computes the source's keys and values) and the later steps. The load time
makes it worth it for long inputs and long-lived processes, not for a few
sentences; speeds are in ``bench/README.md``.

Each program is exported as a function of explicit tensors. A later step takes the
new tokens, the source mask and every layer's cache buffers, returns the logits,
and writes the new positions' keys and values into the buffers in place, as the
eager cache would append them (:meth:`KeyValueCache.storage`). Inside, the
decoder's own modules run on stand-in caches (:class:`GivenCache`), so the
compiled programs are the model's code, not a rewrite of it.

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

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

import decoder_transformer
import encoder_transformer
from decoder_transformer.cache import DecoderCache, storage_dtype
from encoder_transformer.attention import (
    CPU_MATH_KERNEL_MAX_KEYS,
    DECODING_STEP_MAX_QUERIES,
)
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime import for_inference, precision_dtype

logger = logging.getLogger(__name__)

# Bounds the exported step is built for: the most sentences in a batch, and the
# fewest positions a self-attention buffer may have (the exporter's own bound).
MOST_SOURCES, SMALLEST_CAPACITY = 4096, 3


class GivenKeyValues:
    """A stand-in layer cache over given buffers, written in place.

    ``keys`` and ``values`` are ``(b, h, capacity, d_h)`` buffers whose first
    ``length`` positions are stored; ``update`` writes the next positions into them.
    """

    def __init__(self, keys: Tensor, values: Tensor, length: int) -> None:
        self.keys, self.values, self.length = keys, values, length

    @property
    def batch(self) -> int:
        return self.keys.size(0)

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Writes ``(b, h, s_new, d_h)`` after the stored positions; returns all."""
        end = self.length + keys.size(2)
        self.keys[:, :, self.length : end].copy_(keys)
        self.values[:, :, self.length : end].copy_(values)
        self.length = end
        return self.read()

    def read(self) -> tuple[Tensor, Tensor]:
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]


class NewKeyValues:
    """A stand-in for an empty layer cache: keeps what the first step appends."""

    length = 0
    batch = 0

    def __init__(self) -> None:
        self.appended: tuple[Tensor, Tensor] | None = None

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Keeps ``(b, h, s_new, d_h)`` keys and values; returns them as a cache
        would store them (fp32 on a CPU, :func:`storage_dtype`)."""
        self.appended = (keys, values)
        dtype = storage_dtype(keys)
        return keys.to(dtype), values.to(dtype)


class GivenCache:
    """What the decoder reads of a :class:`DecoderCache`, over given stand-ins."""

    def __init__(
        self,
        self_attention: list[GivenKeyValues] | list[NewKeyValues],
        cross_attention: list[GivenKeyValues] | list[NewKeyValues],
    ) -> None:
        self.self_attention, self.cross_attention = self_attention, cross_attention

    @property
    def length(self) -> int:
        return self.self_attention[0].length


class Encoding(nn.Module):
    """The encoder, for ``torch.export``: ``(b, s_src)`` ids and mask → states."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: Tensor, source_mask: Tensor) -> Tensor:
        return self.model.encode(source_ids, source_mask)


class FirstStep(nn.Module):
    """The first decoding step, on empty caches, for ``torch.export``.

    ``forward(tokens, encoder_hidden_states, source_mask)``: ``tokens`` ``(b, 1)``,
    ``encoder_hidden_states`` ``(b, s_src, d)``, ``source_mask`` ``(b, s_src)``.
    Returns the logits ``(b, v)``, then each layer's self-attention keys, then
    values ``(b, h, 1, d_h)``, then cross-attention keys, then values
    ``(b, h, s_src, d_h)``: what the caller's cache is to hold.
    """

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.layers = len(model.decoder.blocks)

    def forward(
        self, tokens: Tensor, encoder_hidden_states: Tensor, source_mask: Tensor
    ) -> tuple[Tensor, ...]:
        own = [NewKeyValues() for _ in range(self.layers)]
        source = [NewKeyValues() for _ in range(self.layers)]
        logits = self.decoder.step(
            tokens, GivenCache(own, source), encoder_hidden_states, source_mask
        )
        appended = [layer.appended for layer in own + source]
        return (
            logits[:, -1],
            *(keys for keys, _ in appended[: self.layers]),
            *(values for _, values in appended[: self.layers]),
            *(keys for keys, _ in appended[self.layers :]),
            *(values for _, values in appended[self.layers :]),
        )


class DecodingStep(nn.Module):
    """One decoding step as a function of tensors, for ``torch.export``.

    Each of ``b_src`` sentences has ``g`` hypotheses in consecutive rows (``g = 1``
    in greedy search, the beams in beam search), ``b = g · b_src`` rows in all, which
    take one token each. Every layer's cache buffers go in, and the new keys and
    values are written into them in place.

    ``forward(tokens, source_mask, cached_positions, buffers)``:

    - ``tokens`` ``(b, 1)``; ``source_mask`` ``(b_src, s_src)`` bool.
    - ``cached_positions`` ``(s,)``: only its size is read, the number of target
      positions in the caches (an exported program is generic over sizes, not
      over integer arguments).
    - ``buffers``: each layer's self-attention keys, then values
      ``(b, h, capacity, d_h)``, with room after position ``s``, then its
      cross-attention keys, then values ``(b_src, h, capacity_src, d_h)``.

    Returns the logits ``(b, v)``.
    """

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.layers = len(model.decoder.blocks)

    def forward(
        self,
        tokens: Tensor,
        source_mask: Tensor,
        cached_positions: Tensor,
        buffers: tuple[Tensor, ...],
    ) -> Tensor:
        n, length = self.layers, cached_positions.size(0)
        own = [GivenKeyValues(buffers[i], buffers[n + i], length) for i in range(n)]
        source = [
            GivenKeyValues(buffers[2 * n + i], buffers[3 * n + i], source_mask.size(1))
            for i in range(n)
        ]
        # The encoder states are read only while the cross-attention cache is empty,
        # which it never is here: the source keys stand in for them.
        logits = self.decoder.step(
            tokens, GivenCache(own, source), buffers[2 * n], source_mask
        )
        return logits[:, -1]


def step_program(beams: int) -> str:
    """The name of the decoding step's program for ``beams`` hypotheses a sentence."""
    return f"step_beams{beams}"


def programs(beam_sizes: Sequence[int]) -> list[str]:
    """The programs that translating with ``beam_sizes`` (1 = greedy) runs."""
    return ["encoder", "first_step"] + [
        step_program(g) for g in sorted(set(beam_sizes))
    ]


def package_path(
    model: Seq2SeqTransformer, directory: Path, precision: str, program: str
) -> Path:
    """Where ``model``'s compiled ``program`` is kept: named by what it came from.

    A package embeds the weights and the code it was compiled from, so its name
    holds the program (:func:`programs`), the precision and a fingerprint of the
    weights, of the model's source code (the two lower packages and this module)
    and of PyTorch's version: a retrained or averaged model, or changed code, gets
    a package of its own.
    """
    digest = hashlib.sha256(torch.__version__.encode())
    sources = [Path(__file__)]
    for package in (encoder_transformer, decoder_transformer):
        sources += sorted(Path(package.__file__).parent.glob("*.py"))
    for source in sources:
        digest.update(source.read_bytes())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        )
    return directory / f"{program}_{precision}_{digest.hexdigest()[:16]}.pt2"


def check_supported(model: Seq2SeqTransformer, precision: str) -> None:
    """Raises ValueError for what a compiled step does not cover."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: a compiled step is bf16 or fp32")
    if model.config.attention != "standard":
        raise ValueError("a compiled step needs standard attention (not latent)")


def encoder_lengths(model: Seq2SeqTransformer, precision: str) -> tuple[int, int]:
    """The shortest and longest sources the compiled encoder takes.

    Within them the encoder's attention takes one way
    (``encoder_transformer.attention``): in fp32, up to 16 queries are multiplied
    out and more go to SDPA; in bf16, SDPA's kernel changes beyond 256 keys.
    Other lengths are encoded eagerly.
    """
    if precision == "fp32":
        return DECODING_STEP_MAX_QUERIES + 1, model.config.max_positions
    return 1, min(model.config.max_positions, CPU_MATH_KERNEL_MAX_KEYS)


# The example sizes an export traces with (any in the ranges below would do).
SOURCES, TARGET_LENGTH, CAPACITY, SOURCE_LENGTH = 3, 5, 9, 7


def export_program(
    model: Seq2SeqTransformer, program: str
) -> torch.export.ExportedProgram:
    """``program`` (one of :func:`programs`) of ``model``, on the CPU in its
    precision, exported for every size that varies: sentences, source and target
    lengths, cache capacities (the hypotheses per sentence are the program's)."""
    if program == "encoder":
        return export_encoder(model)
    if program == "first_step":
        return export_first_step(model)
    return export_later_step(model, int(program.removeprefix("step_beams")))


def sentences_dim() -> torch.export.Dim:
    return torch.export.Dim("sources", min=1, max=MOST_SOURCES)


def export_encoder(model: Seq2SeqTransformer) -> torch.export.ExportedProgram:
    """:class:`Encoding` for the source lengths of :func:`encoder_lengths`."""
    dtype = next(model.parameters()).dtype
    shortest, longest = encoder_lengths(
        model, "fp32" if dtype == torch.float32 else "bf16"
    )
    length = min(shortest + 2, longest)
    source_ids = torch.randint(3, model.config.vocab_size, (SOURCES, length))
    source_mask = torch.ones(SOURCES, length, dtype=torch.bool)
    source = torch.export.Dim("source", min=shortest, max=longest)
    dims = {0: sentences_dim(), 1: source}
    return torch.export.export(
        Encoding(model), (source_ids, source_mask), dynamic_shapes=(dims, dims)
    )


def export_first_step(model: Seq2SeqTransformer) -> torch.export.ExportedProgram:
    """:class:`FirstStep`, one row per sentence."""
    config, dtype = model.config, next(model.parameters()).dtype
    example = (
        torch.randint(3, config.vocab_size, (SOURCES, 1)),
        torch.randn(SOURCES, SOURCE_LENGTH, config.d_model).to(dtype),
        torch.ones(SOURCES, SOURCE_LENGTH, dtype=torch.bool),
    )
    sentences = sentences_dim()
    source = torch.export.Dim("source", min=1, max=config.max_positions)
    dims = ({0: sentences}, {0: sentences, 1: source}, {0: sentences, 1: source})
    return torch.export.export(FirstStep(model), example, dynamic_shapes=dims)


def export_later_step(
    model: Seq2SeqTransformer, beams: int
) -> torch.export.ExportedProgram:
    """:class:`DecodingStep` for ``beams`` hypotheses per sentence."""
    config = model.config
    kv_heads = config.n_kv_heads or config.n_heads
    width = config.d_model // config.n_heads
    n = len(model.decoder.blocks)
    # Caches on a CPU are fp32 (``cache.storage_dtype``).
    own = (beams * SOURCES, kv_heads, CAPACITY, width)
    cross = (SOURCES, kv_heads, SOURCE_LENGTH + 1, width)
    example = (
        torch.randint(3, config.vocab_size, (beams * SOURCES, 1)),
        torch.ones(SOURCES, SOURCE_LENGTH, dtype=torch.bool),
        torch.empty(()).expand(TARGET_LENGTH),
        tuple(
            [torch.randn(own) for _ in range(2 * n)]
            + [torch.randn(cross) for _ in range(2 * n)]
        ),
    )
    sentences = sentences_dim()
    rows = beams * sentences if beams > 1 else sentences
    longest = 4 * config.max_positions  # cache buffers grow by doubling
    source = torch.export.Dim("source", min=1, max=config.max_positions)
    target = torch.export.Dim("target", min=1, max=config.max_positions - 1)
    own_capacity = torch.export.Dim("capacity", min=SMALLEST_CAPACITY, max=longest)
    cross_capacity = torch.export.Dim("source_capacity", min=1, max=longest)
    own_dims = {0: rows, 2: own_capacity}
    cross_dims = {0: sentences, 2: cross_capacity}
    dims = (
        {0: rows},
        {0: sentences, 1: source},
        {0: target},
        tuple([own_dims] * (2 * n) + [cross_dims] * (2 * n)),
    )
    return torch.export.export(DecodingStep(model), example, dynamic_shapes=dims)


def compile_program(
    model: Seq2SeqTransformer, program: str, path: Path, precision: str = "bf16"
) -> Path:
    """Exports and compiles ``model``'s ``program`` into the package ``path``.

    Args:
        model: A translation model as loaded, not prepared for inference (left
            unchanged: a copy is compiled).
        program: ``encoder``, ``first_step`` or a :func:`step_program`.
        path: The ``.pt2`` file to write (its folder is created).
        precision: ``bf16`` or ``fp32``, the weights' type in the package.

    Returns:
        ``path``.
    """
    check_supported(model, precision)
    dtype = precision_dtype(precision)
    compiled = copy.deepcopy(model).to("cpu", dtype).eval().requires_grad_(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Without gradients, inductor freezes the weights and prepacks the linear layers.
    with torch.no_grad():
        exported = export_program(compiled, program)
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs={"freezing": True}
        )
    logger.info("compiled %s in %.0f s: %s", program, time.perf_counter() - start, path)
    return path


class CompiledEncoder:
    """``encode`` of a model, run by its compiled encoder where it can be.

    Args:
        package: The ``encoder`` package of this model.
        eager_encode: The model's own ``encode``, for other lengths.
        lengths: The shortest and longest sources the package takes
            (:func:`encoder_lengths`).
    """

    def __init__(self, package: Path, eager_encode, lengths: tuple[int, int]) -> None:
        self.run = torch._inductor.aoti_load_package(str(package))
        self.eager_encode, self.lengths = eager_encode, lengths

    def __call__(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """``(b, s_src)`` ids and mask → ``(b, s_src, d)`` encoder hidden states."""
        rows, length = source_ids.shape
        shortest, longest = self.lengths
        if not shortest <= length <= longest or rows > MOST_SOURCES:
            return self.eager_encode(source_ids, source_mask)
        if source_mask is None:
            source_mask = torch.ones(rows, length, dtype=torch.bool)
        # The package reads its inputs as contiguous tensors.
        return self.run(source_ids.contiguous(), source_mask.contiguous())


class CompiledStep:
    """``decode_step`` of a model, run by compiled packages where they can be.

    Args:
        first_step: The ``first_step`` package of this model.
        steps: For each number of hypotheses per sentence (1 for greedy search,
            the beam size for beam search), the package of its :func:`step_program`.
        eager_step: The model's own ``decode_step``, for the steps no package takes.
    """

    def __init__(self, first_step: Path, steps: dict[int, Path], eager_step) -> None:
        self.first_step = torch._inductor.aoti_load_package(str(first_step))
        self.steps = {
            beams: torch._inductor.aoti_load_package(str(package))
            for beams, package in steps.items()
        }
        self.eager_step = eager_step
        self.no_positions = torch.empty(())  # expanded: a size without memory

    def __call__(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """The ``decode_step`` contract: ``(b, 1, v)`` logits; ``cache`` extended."""
        if target_ids.size(1) == 1 and cache.length == 0:
            logits = self.start(target_ids, encoder_hidden_states, source_mask, cache)
        elif target_ids.size(1) == 1:
            logits = self.go_on(target_ids, source_mask, cache)
        else:
            logits = None
        if logits is None:  # sizes the packages were not built for
            return self.eager_step(
                target_ids, encoder_hidden_states, source_mask, cache
            )
        return logits.unsqueeze(1)

    def start(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor | None:
        """The first step's ``(b, v)`` logits; fills the empty caches."""
        rows, source_length, _ = encoder_hidden_states.shape
        if target_ids.size(0) != rows or rows > MOST_SOURCES:
            return None
        if source_mask is None:
            source_mask = torch.ones(rows, source_length, dtype=torch.bool)
        # The package reads its inputs as contiguous tensors.
        logits, *appended = self.first_step(
            target_ids.contiguous(),
            encoder_hidden_states.contiguous(),
            source_mask.contiguous(),
        )
        n = len(cache.self_attention)
        for layer, layer_cache in enumerate(cache.self_attention):
            layer_cache.update(appended[layer], appended[n + layer])
        for layer, layer_cache in enumerate(cache.cross_attention):
            layer_cache.update(appended[2 * n + layer], appended[3 * n + layer])
        return logits

    def go_on(
        self, target_ids: Tensor, source_mask: Tensor | None, cache: DecoderCache
    ) -> Tensor | None:
        """A later step's ``(b, v)`` logits; writes into the caches' buffers."""
        sources = cache.cross_attention[0].batch
        beams, left = divmod(target_ids.size(0), sources)
        run = self.steps.get(beams)
        if run is None or left or sources > MOST_SOURCES:
            return None
        own = [layer.storage(room=1) for layer in cache.self_attention]
        if own[0][0].size(2) < SMALLEST_CAPACITY:
            return None
        source = [layer.storage() for layer in cache.cross_attention]
        if source_mask is None:
            source_mask = torch.ones(
                sources, cache.cross_attention[0].length, dtype=torch.bool
            )
        buffers = (
            [keys for keys, _ in own]
            + [values for _, values in own]
            + [keys for keys, _ in source]
            + [values for _, values in source]
        )
        logits = run(
            target_ids.contiguous(),
            source_mask.contiguous(),
            self.no_positions.expand(cache.length),
            tuple(buffers),
        )
        for layer in cache.self_attention:
            layer.advance(1)
        return logits


class CompileError(RuntimeError):
    """A program could not be compiled (e.g. no C++ compiler)."""


def compiled_package(
    model: Seq2SeqTransformer, directory: Path, precision: str, program: str
) -> Path:
    """The package of ``model``'s ``program`` in ``directory``, compiled if missing.

    Call it before ``runtime.for_inference`` (which converts the model in place):
    the program is compiled from a copy of the model as loaded.

    Args:
        model: A translation model as loaded.
        directory: Where packages are kept.
        precision: ``bf16`` or ``fp32``.
        program: One of :func:`programs`.

    Raises:
        ValueError: a precision or an attention kind the compiled step lacks.
        CompileError: compiling failed; the message says what to do.
    """
    check_supported(model, precision)
    path = package_path(model, directory, precision, program)
    if path.exists():
        return path
    logger.warning("compiling %s once (about half a minute)", program)
    partial = path.with_suffix(".partial.pt2")
    try:
        compile_program(model, program, partial, precision)
    except ValueError:
        raise
    except Exception as error:  # the compiler's or exporter's own errors
        partial.unlink(missing_ok=True)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise CompileError(
            f"could not compile {program} ({type(error).__name__}: {first_line}); "
            "run without --compiled (compiling needs a C++ compiler such as g++)"
        ) from error
    partial.replace(path)  # whole packages only, even if interrupted
    return path


def compiled_packages(
    model: Seq2SeqTransformer,
    directory: Path,
    precision: str,
    beam_sizes: Sequence[int] = (1,),
) -> dict[str, Path]:
    """The packages of every program the searches need, compiled where missing.

    Args:
        model: A translation model as loaded, on the CPU.
        directory: Where packages are kept.
        precision: ``bf16`` or ``fp32``.
        beam_sizes: The searches to compile a step for (1 = greedy).

    Returns:
        The package of each of :func:`programs`, by program.

    Raises:
        ValueError: the model is not on the CPU, or not covered (see
            :func:`check_supported`).
        CompileError: compiling failed.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"a compiled step runs on the CPU, not {device}")
    return {
        program: compiled_package(model, directory, precision, program)
        for program in programs(beam_sizes)
    }


def for_compiled_inference(
    model: Seq2SeqTransformer,
    precision: str,
    directory: Path,
    beam_sizes: Sequence[int] = (1,),
) -> Seq2SeqTransformer:
    """``runtime.for_inference``, with ``encode`` and ``decode_step`` compiled.

    Decode with it one batch at a time: a compiled program holds Python's
    interpreter lock while it runs, so decoding threads would take turns (several
    batches at once run on worker processes,
    :mod:`machine_translation.decoding_processes`).

    Args:
        model: A model as loaded, on the CPU (converted in place, as by
            ``for_inference``).
        precision: ``bf16`` or ``fp32``.
        directory: Where the packages are kept (compiled there first if missing).
        beam_sizes: The searches to compile a step for (1 = greedy).

    Raises:
        ValueError: the model is not on the CPU, or not covered (see
            :func:`check_supported`).
        CompileError: compiling failed.
    """
    packages = compiled_packages(model, directory, precision, beam_sizes)
    lengths = encoder_lengths(model, precision)
    model = for_inference(model, precision)
    model.encode = CompiledEncoder(packages["encoder"], model.encode, lengths)
    steps = {g: packages[step_program(g)] for g in set(beam_sizes)}
    model.decode_step = CompiledStep(packages["first_step"], steps, model.decode_step)
    return model
