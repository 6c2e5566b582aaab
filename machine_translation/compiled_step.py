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
mask and every layer's cached keys and values go in; the logits and the new
positions' keys and values come out, and the caller appends them to its cache.
Inside, the decoder's own modules run on a stand-in cache (:class:`GivenCache`)
that concatenates the new keys and values to the given ones, so the compiled step
is the model's code, not a rewrite of it.

The package holds the weights: it belongs to one model, so its name carries a
fingerprint of the weights and of the PyTorch version (:func:`package_path`).
The first two steps of a search run eagerly (they compute the source's keys and
values; the exporter also treats lengths 0 and 1 specially). Beam search keeps one
source row for a sentence's beams; the compiled step takes one per row, so the
source keys and values are expanded per beam first. Needs a C++ compiler to build;
CPU only.

Shapes: ``b`` rows, ``h`` heads, ``s`` cached target positions, ``s_src`` source
positions, ``d_h`` head width, ``v`` vocabulary.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import decoder_transformer
import encoder_transformer
from decoder_transformer.cache import DecoderCache
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime import for_inference, precision_dtype

logger = logging.getLogger(__name__)


class GivenKeyValues:
    """A stand-in layer cache over given keys and values; records what is appended."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys, self.values = keys, values
        self.appended: tuple[Tensor, Tensor] | None = None

    @property
    def length(self) -> int:
        return self.keys.size(2)

    @property
    def batch(self) -> int:
        return self.keys.size(0)

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Records the new positions; returns all of them, ``(b, h, s + 1, d_h)``."""
        self.appended = (keys, values)
        return (
            torch.cat([self.keys, keys.to(self.keys.dtype)], dim=2),
            torch.cat([self.values, values.to(self.values.dtype)], dim=2),
        )

    def read(self) -> tuple[Tensor, Tensor]:
        return self.keys, self.values


class GivenCache:
    """What the decoder reads of a :class:`DecoderCache`, over given tensors."""

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

    ``forward(tokens, source_mask, caches)``: ``tokens`` ``(b, 1)``, ``source_mask``
    ``(b, s_src)`` bool, and ``caches`` each layer's self-attention keys, then
    values ``(b, h, s, d_h)``, then cross-attention keys, then values
    ``(b, h, s_src, d_h)``. Returns the logits ``(b, v)``, then each layer's new
    keys, then new values ``(b, h, 1, d_h)``.
    """

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.layers = len(model.decoder.blocks)

    def forward(
        self, tokens: Tensor, source_mask: Tensor, caches: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        n = self.layers
        own = [GivenKeyValues(caches[i], caches[n + i]) for i in range(n)]
        source = [
            GivenKeyValues(caches[2 * n + i], caches[3 * n + i]) for i in range(n)
        ]
        # The encoder states are read only while the cross-attention cache is empty,
        # which it never is here: the source keys stand in for them.
        logits = self.decoder.step(
            tokens, GivenCache(own, source), caches[2 * n], source_mask
        )
        new_keys = [layer.appended[0] for layer in own]
        new_values = [layer.appended[1] for layer in own]
        return (logits[:, -1], *new_keys, *new_values)


def package_path(model: Seq2SeqTransformer, directory: Path, precision: str) -> Path:
    """Where ``model``'s compiled step is kept: named by what it was compiled from.

    A package embeds the weights and the code it was compiled from, so its name is
    a fingerprint of the weights, of the model's source code (the two lower
    packages and this module) and of PyTorch's version: a retrained or averaged
    model, or changed code, gets a package of its own.
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
    return directory / f"decoding_step_{precision}_{digest.hexdigest()[:16]}.pt2"


def check_supported(model: Seq2SeqTransformer, precision: str) -> None:
    """Raises ValueError for what a compiled step does not cover."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: a compiled step is bf16 or fp32")
    if model.config.attention != "standard":
        raise ValueError("a compiled step needs standard attention (not latent)")


def compile_decoding_step(
    model: Seq2SeqTransformer, path: Path, precision: str = "bf16"
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
    rows, length, source_length = 3, 5, 7
    # Example inputs: KV caches on a CPU are fp32 (``cache.storage_dtype``).
    example = (
        torch.randint(3, config.vocab_size, (rows, 1)),
        torch.ones(rows, source_length, dtype=torch.bool),
        tuple(
            [torch.randn(rows, kv_heads, length, width) for _ in range(2 * n)]
            + [torch.randn(rows, kv_heads, source_length, width) for _ in range(2 * n)]
        ),
    )
    batch = torch.export.Dim("rows", min=1, max=4096)
    target = torch.export.Dim("target", min=2, max=config.max_positions - 1)
    source = torch.export.Dim("source", min=1, max=config.max_positions)
    dynamic_shapes = (
        {0: batch},
        {0: batch, 1: source},
        tuple([{0: batch, 2: target}] * (2 * n) + [{0: batch, 2: source}] * (2 * n)),
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
    """``decode_step`` of a model, run by a compiled package where it can be.

    Args:
        package: A package from :func:`compile_decoding_step` for this model.
        eager_step: The model's own ``decode_step``, for the steps the package does
            not take.
    """

    def __init__(self, package: Path, eager_step) -> None:
        self.run = torch._inductor.aoti_load_package(str(package))
        self.eager_step = eager_step

    def __call__(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """The ``decode_step`` contract: ``(b, 1, v)`` logits; ``cache`` extended."""
        if cache.length < 2 or target_ids.size(1) != 1:
            return self.eager_step(
                target_ids, encoder_hidden_states, source_mask, cache
            )
        rows = target_ids.size(0)
        own = [layer.read() for layer in cache.self_attention]
        source = [layer.read() for layer in cache.cross_attention]
        source_rows = source[0][0].size(0)
        if source_mask is None:
            source_mask = torch.ones(
                source_rows, source[0][0].size(2), dtype=torch.bool
            )
        if rows != source_rows:  # beam search: each sentence's beams, one source row
            beams = rows // source_rows
            source = [
                (keys.repeat_interleave(beams, 0), values.repeat_interleave(beams, 0))
                for keys, values in source
            ]
            source_mask = source_mask.repeat_interleave(beams, 0)
        caches = (
            [keys.contiguous() for keys, _ in own]
            + [values.contiguous() for _, values in own]
            + [keys.contiguous() for keys, _ in source]
            + [values.contiguous() for _, values in source]
        )
        # The package reads its inputs as contiguous tensors.
        logits, *appended = self.run(
            target_ids.contiguous(), source_mask.contiguous(), tuple(caches)
        )
        n = len(own)
        for layer, cache_layer in enumerate(cache.self_attention):
            cache_layer.update(appended[layer], appended[n + layer])
        return logits.unsqueeze(1)


class CompileError(RuntimeError):
    """The decoding step could not be compiled (e.g. no C++ compiler)."""


def compiled_step_package(
    model: Seq2SeqTransformer, directory: Path, precision: str
) -> Path:
    """The package of ``model``'s compiled step in ``directory``, compiled if missing.

    Call it before ``runtime.for_inference`` (which converts the model in place):
    the step is compiled from a copy of the model as loaded.

    Raises:
        ValueError: a precision or an attention kind the compiled step lacks.
        CompileError: compiling failed; the message says what to do.
    """
    check_supported(model, precision)
    path = package_path(model, directory, precision)
    if path.exists():
        return path
    logger.warning("compiling the decoding step once (about half a minute)")
    partial = path.with_suffix(".partial.pt2")
    try:
        compile_decoding_step(model, partial, precision)
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
    model: Seq2SeqTransformer, precision: str, directory: Path
) -> Seq2SeqTransformer:
    """``runtime.for_inference``, with ``decode_step`` run by the compiled step.

    Args:
        model: A model as loaded, on the CPU (converted in place, as by
            ``for_inference``).
        precision: ``bf16`` or ``fp32``.
        directory: Where the package is kept (compiled there first if missing).

    Raises:
        ValueError: the model is not on the CPU, or not covered (see
            :func:`check_supported`).
        CompileError: compiling failed.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"a compiled step runs on the CPU, not {device}")
    package = compiled_step_package(model, directory, precision)
    model = for_inference(model, precision)
    model.decode_step = CompiledStep(package, model.decode_step)
    return model
