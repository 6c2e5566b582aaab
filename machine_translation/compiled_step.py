"""The decoding step compiled ahead of time: faster translation on a CPU.

A decoding step in eager PyTorch is about 170 small operations, each dispatched from
Python; at one sentence at a time their overhead, not the arithmetic, sets the speed.
AOTInductor compiles the step into a shared library once (fusing the small
operations into a few C++ kernels, with the linear layers' weights prepacked), and
a later process loads that package (about 3 s with the import of the compiler's
runtime), as CTranslate2 converts a model once. Measured on this project's CPU:
greedy search 1.5–1.7× as fast one sentence at a time, 1.1–1.3× at batch 64; beam
search 1.3× and unchanged (``bench/README.md``). The load time makes it worth it
for long inputs and long-lived processes, not for a few sentences.

The step is exported as a function of explicit tensors: the new tokens, the source
mask and every layer's cache buffers go in, the logits come out, and the new
positions' keys and values are written into the buffers in place, as the eager
cache would append them (:meth:`KeyValueCache.storage`). Inside, the decoder's own
modules run on a stand-in cache (:class:`GivenCache`) over those buffers, so the
compiled step is the model's code, not a rewrite of it.

The package holds the weights: it belongs to one model, so its name carries a
fingerprint of the weights and of the code (:func:`package_path`). It is built for
a number of hypotheses per sentence: one for greedy search, the beam size for beam
search, whose beams of a sentence then share one row of source keys and values,
as in the eager decoder. The first step of a search runs eagerly (it computes the
source's keys and values). Needs a C++ compiler to build; CPU only.

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
from decoder_transformer.cache import DecoderCache
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime import for_inference, precision_dtype

logger = logging.getLogger(__name__)

# Why decoding threads (``translate_token_ids(workers=...)``) do not add up here.
ONE_BATCH_AT_A_TIME = (
    "a compiled step decodes one batch at a time (it holds Python's interpreter "
    "lock while it runs): use one worker"
)

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


class GivenCache:
    """What the decoder reads of a :class:`DecoderCache`, over given buffers."""

    def __init__(
        self,
        self_attention: list[GivenKeyValues],
        cross_attention: list[GivenKeyValues],
    ) -> None:
        self.self_attention, self.cross_attention = self_attention, cross_attention

    @property
    def length(self) -> int:
        return self.self_attention[0].length


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


def package_path(
    model: Seq2SeqTransformer, directory: Path, precision: str, beams: int = 1
) -> Path:
    """Where ``model``'s compiled step is kept: named by what it was compiled from.

    A package embeds the weights and the code it was compiled from, so its name
    holds the precision, the hypotheses per sentence (``beams``) and a fingerprint
    of the weights, of the model's source code (the two lower packages and this
    module) and of PyTorch's version: a retrained or averaged model, or changed
    code, gets a package of its own.
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
    name = f"decoding_step_{precision}_beams{beams}_{digest.hexdigest()[:16]}.pt2"
    return directory / name


def check_supported(model: Seq2SeqTransformer, precision: str) -> None:
    """Raises ValueError for what a compiled step does not cover."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: a compiled step is bf16 or fp32")
    if model.config.attention != "standard":
        raise ValueError("a compiled step needs standard attention (not latent)")


def compile_decoding_step(
    model: Seq2SeqTransformer, path: Path, precision: str = "bf16", beams: int = 1
) -> Path:
    """Exports and compiles ``model``'s decoding step into the package ``path``.

    Args:
        model: A translation model as loaded, not prepared for inference (left
            unchanged: a copy is compiled).
        path: The ``.pt2`` file to write (its folder is created).
        precision: ``bf16`` or ``fp32``, the weights' type in the package.

    Returns:
        ``path``.
    """
    check_supported(model, precision)
    dtype = precision_dtype(precision)
    compiled = copy.deepcopy(model).to("cpu", dtype).eval().requires_grad_(False)
    step = DecodingStep(compiled)
    config = model.config
    kv_heads, width = (
        config.n_kv_heads or config.n_heads,
        config.d_model // config.n_heads,
    )
    n = step.layers
    sources, length, capacity, source_length = 3, 5, 9, 7
    # Example inputs: KV caches on a CPU are fp32 (``cache.storage_dtype``).
    own = (beams * sources, kv_heads, capacity, width)
    source = (sources, kv_heads, source_length + 1, width)
    example = (
        torch.randint(3, config.vocab_size, (beams * sources, 1)),
        torch.ones(sources, source_length, dtype=torch.bool),
        torch.empty(()).expand(length),
        tuple(
            [torch.randn(own) for _ in range(2 * n)]
            + [torch.randn(source) for _ in range(2 * n)]
        ),
    )
    longest = 4 * config.max_positions  # buffers grow by doubling
    sources = torch.export.Dim("sources", min=1, max=MOST_SOURCES)
    rows = beams * sources if beams > 1 else sources
    length = torch.export.Dim("target", min=1, max=config.max_positions - 1)
    capacity = torch.export.Dim("capacity", min=SMALLEST_CAPACITY, max=longest)
    source_length = torch.export.Dim("source", min=1, max=config.max_positions)
    source_capacity = torch.export.Dim("source_capacity", min=1, max=longest)
    own_dims = {0: rows, 2: capacity}
    source_dims = {0: sources, 2: source_capacity}
    dynamic_shapes = (
        {0: rows},
        {0: sources, 1: source_length},
        {0: length},
        tuple([own_dims] * (2 * n) + [source_dims] * (2 * n)),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Without gradients, inductor freezes the weights and prepacks the linear layers.
    with torch.no_grad():
        exported = torch.export.export(step, example, dynamic_shapes=dynamic_shapes)
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs={"freezing": True}
        )
    logger.info(
        "compiled the decoding step in %.0f s: %s", time.perf_counter() - start, path
    )
    return path


class CompiledStep:
    """``decode_step`` of a model, run by compiled packages where they can be.

    Args:
        packages: For each number of hypotheses per sentence (1 for greedy search,
            the beam size for beam search), a package from
            :func:`compile_decoding_step` for this model.
        eager_step: The model's own ``decode_step``, for the steps no package takes.
    """

    def __init__(self, packages: dict[int, Path], eager_step) -> None:
        self.runs = {
            beams: torch._inductor.aoti_load_package(str(package))
            for beams, package in packages.items()
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
        sources = cache.cross_attention[0].batch
        beams, left = divmod(target_ids.size(0), sources or 1)
        run = self.runs.get(beams)
        # The first step computes the source keys and values: eager.
        if run is None or left or cache.length < 1 or target_ids.size(1) != 1:
            return self.eager_step(
                target_ids, encoder_hidden_states, source_mask, cache
            )
        own = [layer.storage(room=1) for layer in cache.self_attention]
        if own[0][0].size(2) < SMALLEST_CAPACITY or sources > MOST_SOURCES:
            return self.eager_step(
                target_ids, encoder_hidden_states, source_mask, cache
            )
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
        cached_positions = self.no_positions.expand(cache.length)
        # The package reads its inputs as contiguous tensors.
        logits = run(
            target_ids.contiguous(),
            source_mask.contiguous(),
            cached_positions,
            tuple(buffers),
        )
        for layer in cache.self_attention:
            layer.advance(1)
        return logits.unsqueeze(1)


class CompileError(RuntimeError):
    """The decoding step could not be compiled (e.g. no C++ compiler)."""


def compiled_step_package(
    model: Seq2SeqTransformer, directory: Path, precision: str, beams: int = 1
) -> Path:
    """The package of ``model``'s compiled step in ``directory``, compiled if missing.

    Call it before ``runtime.for_inference`` (which converts the model in place):
    the step is compiled from a copy of the model as loaded.

    Args:
        model: A translation model as loaded.
        directory: Where packages are kept.
        precision: ``bf16`` or ``fp32``.
        beams: Hypotheses per sentence: 1 for greedy search, else the beam size.

    Raises:
        ValueError: a precision or an attention kind the compiled step lacks.
        CompileError: compiling failed; the message says what to do.
    """
    check_supported(model, precision)
    path = package_path(model, directory, precision, beams)
    if path.exists():
        return path
    search = "greedy search" if beams == 1 else f"beam size {beams}"
    logger.warning(
        "compiling the decoding step for %s once (about half a minute)", search
    )
    partial = path.with_suffix(".partial.pt2")
    try:
        compile_decoding_step(model, partial, precision, beams)
    except ValueError:
        raise
    except Exception as error:  # the compiler's or exporter's own errors
        partial.unlink(missing_ok=True)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise CompileError(
            f"could not compile the decoding step ({type(error).__name__}: "
            f"{first_line}); it needs a C++ compiler (g++): install one, or run "
            "without --compiled"
        ) from error
    partial.replace(path)  # whole packages only, even if interrupted
    return path


def for_compiled_inference(
    model: Seq2SeqTransformer,
    precision: str,
    directory: Path,
    beam_sizes: Sequence[int] = (1,),
) -> Seq2SeqTransformer:
    """``runtime.for_inference``, with ``decode_step`` run by compiled steps.

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
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"a compiled step runs on the CPU, not {device}")
    packages = {
        beams: compiled_step_package(model, directory, precision, beams)
        for beams in sorted(set(beam_sizes))
    }
    model = for_inference(model, precision)
    model.decode_step = CompiledStep(packages, model.decode_step)
    return model
