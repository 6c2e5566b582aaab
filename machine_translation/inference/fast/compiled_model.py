"""A model whose encoder and decoding steps run as compiled programs.

One concept, past 300 lines: the loaded programs (:class:`Program`), the encoder
and the decoding steps that call them where their sizes fit and fall back to the
eager model elsewhere (:class:`CompiledEncoder`, :class:`CompiledStep`), and the
model a search sees (:class:`CompiledModel`) are one path from a search to a
package; each part is short and used only by the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from decoder_transformer.cache import DecoderCache
from machine_translation.inference.beam_choice import BeamChoice
from machine_translation.inference.fast.packages import compiled_packages
from machine_translation.inference.fast.programs import (
    MOST_SOURCES,
    ONE_SENTENCE_FIRST_STEP,
    SMALLEST_CAPACITY,
    encoder_lengths,
    encoder_programs,
    few_rows_program,
    few_sources,
    step_program,
)
from machine_translation.inference.int8 import Int8Seq2Seq
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.devices import for_inference


class Program:
    """A compiled package, called with its inputs as flat tensors: the export's
    inputs in order, any tuple of them spread out; returns the outputs as a list.

    What ``torch._inductor.aoti_load_package`` returns takes the export's nested
    inputs and, at every call, reads the program's call spec back, flattens the
    inputs and unflattens the outputs (``torch.utils._pytree``): Python work once
    per generated token: a one-row step's call measured 203-265 µs through it
    against 117-127 through the loader itself (bf16, one thread, 2026-12-07,
    ``bench/sentence_time.py``). The loader runs the flat list as it is.
    """

    def __init__(self, package: Path) -> None:
        self.loader = torch._inductor.aoti_load_package(str(package)).loader

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        """The program's outputs for ``inputs`` (each contiguous, as exported)."""
        return self.loader.run(inputs)


class CompiledEncoder:
    """``encode`` of a model, run by its compiled encoders where they can be.

    Args:
        packages: The encoder packages of this model (:func:`encoder_programs`),
            by the shortest and longest sources each takes (:func:`encoder_lengths`).
        eager_encode: The model's own ``encode``, for other lengths.
    """

    def __init__(self, packages: dict[tuple[int, int], Path], eager_encode) -> None:
        self.runs = {lengths: Program(package) for lengths, package in packages.items()}
        self.eager_encode = eager_encode

    def __call__(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """``(b, s_src)`` ids and mask → ``(b, s_src, d)`` encoder hidden states."""
        rows, length = source_ids.shape
        run = next(
            (run for (low, high), run in self.runs.items() if low <= length <= high),
            None,
        )
        if run is None or rows > MOST_SOURCES:
            return self.eager_encode(source_ids, source_mask)
        if source_mask is None:
            source_mask = torch.ones(rows, length, dtype=torch.bool)
        # The package reads its inputs as contiguous tensors.
        return run(source_ids.contiguous(), source_mask.contiguous())[0]


class CompiledStep:
    """``decode_step`` of a model, run by compiled packages where they can be.

    Args:
        first_step: The ``first_step`` package of this model.
        steps: For each number of hypotheses per sentence (1 for greedy search,
            the beam size for beam search), the package of its :func:`step_program`.
        eager_step: The model's own ``decode_step``, for the steps no package takes.
        few_rows_steps: The packages of :func:`few_rows_program`, by hypotheses
            per sentence: they take the steps of at most :func:`few_sources`
            sentences.
        one_sentence_first_step: The package of the first step built for one
            sentence (:data:`ONE_SENTENCE_FIRST_STEP`), if there is one.
    """

    def __init__(
        self,
        first_step: Path,
        steps: dict[int, Path],
        eager_step,
        few_rows_steps: dict[int, Path] | None = None,
        one_sentence_first_step: Path | None = None,
    ) -> None:
        self.first_step = Program(first_step)
        self.one_sentence_first_step = (
            Program(one_sentence_first_step) if one_sentence_first_step else None
        )
        self.steps = {beams: Program(package) for beams, package in steps.items()}
        self.few_rows_steps = {
            beams: Program(package) for beams, package in (few_rows_steps or {}).items()
        }
        self.eager_step = eager_step
        self.no_positions = torch.empty(())  # expanded: a size without memory
        self.any_forbidden = torch.zeros(2, dtype=torch.long)

    def __call__(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """The ``decode_step`` contract: ``(b, 1, v)`` logits; ``cache`` extended."""
        logits = None
        if target_ids.size(1) == 1 and cache.length == 0:
            logits = self.start(target_ids, encoder_hidden_states, source_mask, cache)
        elif target_ids.size(1) == 1:
            run = self.later_step(target_ids.size(0), cache)
            # (a step of several hypotheses a sentence chooses beams: not logits;
            # greedy's step also chooses tokens, not read here)
            if run is not None and target_ids.size(0) == cache.cross_attention[0].batch:
                outputs = self.go_on(
                    run, target_ids, source_mask, cache, self.any_forbidden
                )
                logits = None if outputs is None else outputs[0]
        if logits is None:  # sizes the packages were not built for
            return self.eager_step(
                target_ids, encoder_hidden_states, source_mask, cache
            )
        return logits.unsqueeze(1)

    def choose_tokens(
        self,
        target_ids: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
        forbidden: Tensor,
    ) -> Tensor | None:
        """A later step of greedy search (``decode_greedy_step``), where a
        package takes it: the ``(b,)`` tokens; else None, ``cache`` unchanged."""
        if target_ids.size(1) != 1 or cache.length == 0 or forbidden.size(0) != 2:
            return None
        rows, sources = target_ids.size(0), cache.cross_attention[0].batch
        run = self.later_step(rows, cache)
        if run is None or rows != sources:  # (several a sentence: beam search's)
            return None
        outputs = self.go_on(run, target_ids, source_mask, cache, forbidden)
        return None if outputs is None else outputs[1]

    def choose_beams(
        self,
        target_ids: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
        choice_inputs: tuple[Tensor, Tensor, Tensor],
    ) -> BeamChoice | None:
        """A later step of beam search (``decode_beam_step``), where a package
        takes it: the :class:`BeamChoice`; else None, ``cache`` unchanged."""
        if target_ids.size(1) != 1 or cache.length == 0:
            return None
        rows, sources = target_ids.size(0), cache.cross_attention[0].batch
        run = self.later_step(rows, cache)
        if run is None or rows == sources:  # (one a sentence: greedy's logits)
            return None
        outputs = self.go_on(run, target_ids, source_mask, cache, *choice_inputs)
        return None if outputs is None else BeamChoice(*outputs)

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
        run = self.first_step
        if rows == 1 and self.one_sentence_first_step is not None:
            run = self.one_sentence_first_step
        # The package reads its inputs as contiguous tensors.
        logits, *appended = run(
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

    def later_step(self, rows: int, cache: DecoderCache) -> Program | None:
        """The package for a later step of ``rows`` hypotheses, if one is built."""
        sources = cache.cross_attention[0].batch
        beams, left = divmod(rows, sources)
        if left or sources > MOST_SOURCES:
            return None
        if beams in self.few_rows_steps and sources <= few_sources(beams):
            return self.few_rows_steps[beams]
        return self.steps.get(beams)

    def go_on(
        self,
        run: Program,
        target_ids: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
        *choice_inputs: Tensor,
    ) -> list[Tensor] | None:
        """A later step by ``run``: its outputs (the ``(b, v)`` logits, or beam
        search's choice); writes into the caches' buffers. None where the caches
        are too short for the package (then nothing is written)."""
        own = [layer.storage(room=1) for layer in cache.self_attention]
        if own[0][0].size(2) < SMALLEST_CAPACITY:
            return None
        source = [layer.storage() for layer in cache.cross_attention]
        sources = source[0][0].size(0)
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
        outputs = run(
            target_ids.contiguous(),
            source_mask.contiguous(),
            self.no_positions.expand(cache.length),
            *buffers,
            *choice_inputs,
        )
        for layer in cache.self_attention:
            layer.advance(1)
        return outputs


class CompiledModel:
    """A translation model whose encoder and decoding steps run as compiled
    programs where they can, and as the model's own code elsewhere.

    It is what a search needs of a model (``inference.decoders.StepDecoder``);
    the model itself is left as it is. Decode with it one batch at a time: a
    compiled program holds Python's interpreter lock while it runs, so threads
    would take turns (several batches at once run on worker processes,
    :mod:`machine_translation.inference.fast.processes`).

    Args:
        model: A model as loaded, on the CPU (converted in place to ``precision``
            for the eager fallback, as by ``runtime.devices.for_inference``; for
            ``int8`` the fallback is an int8 model built from it).
        precision: ``bf16``, ``fp32`` or ``int8``.
        directory: Where the packages are kept (compiled there first if missing).
        beam_sizes: The searches to compile a step for (1 = greedy).

    Raises:
        ValueError: the model is not on the CPU, or not covered (see
            :func:`~machine_translation.inference.fast.packages.check_supported`).
        CompileError: compiling failed.
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        precision: str,
        directory: Path,
        beam_sizes: Sequence[int] = (1,),
    ) -> None:
        packages = compiled_packages(model, directory, precision, beam_sizes)
        self.model = for_inference(model, precision)
        if precision == "int8":  # the sizes no program takes, in int8 too
            self.model = Int8Seq2Seq(self.model)
        self.config = model.config
        encoders = {
            encoder_lengths(model, precision, program): packages[program]
            for program in encoder_programs(precision)
        }
        self.encoder = CompiledEncoder(encoders, self.model.encode)
        steps = {g: packages[step_program(g)] for g in set(beam_sizes)}
        few_rows_steps = {
            g: packages[few_rows_program(g)]
            for g in set(beam_sizes)
            if few_rows_program(g) in packages
        }
        self.step = CompiledStep(
            packages["first_step"],
            steps,
            self.model.decode_step,
            few_rows_steps,
            packages.get(ONE_SENTENCE_FIRST_STEP),
        )
        self.free = torch.full((64,), -1)  # beam search's "no token required"

    def parameters(self) -> Iterator[nn.Parameter]:
        """The eager model's weights (their type is the programs' float type)."""
        return self.model.parameters()

    def encode(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """``(b, s_src)`` ids and mask → ``(b, s_src, d)`` encoder states."""
        return self.encoder(source_ids, source_mask)

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty cache, as the model's own."""
        return self.model.new_cache(capacity)

    def decode_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """``(b, 1)`` ids → ``(b, 1, v)`` logits; extends ``cache``."""
        return self.step(target_ids, encoder_hidden_states, source_mask, cache)

    def decode_greedy_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
        forbidden: Tensor,
    ) -> Tensor | None:
        """A later step of greedy search and its choice of the next tokens
        (``inference.decoders.GreedyStepDecoder``), where a package takes it."""
        return self.step.choose_tokens(
            target_ids, source_mask, cache, forbidden.contiguous()
        )

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
        """A later step of beam search and its choice of the next beams
        (``inference.decoders.BeamStepDecoder``), where a package takes it."""
        sources = scores.size(0)
        if required is None:  # (the package takes a tensor: -1 leaves all free)
            if self.free.size(0) < sources:
                self.free = torch.full((sources,), -1)
            required = self.free[:sources]
        choice_inputs = (scores.contiguous(), required.contiguous(), special)
        return self.step.choose_beams(target_ids, source_mask, cache, choice_inputs)
