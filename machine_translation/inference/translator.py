"""The Translator: text in, translations out, with a checkpoint.

It adds what text needs around :func:`translate_token_ids`: loading the checkpoint,
tokenizing, empty lines (kept empty), sources longer than the model reads
(truncated with a warning) and detokenizing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.config.compose import load_decoding_config
from machine_translation.config.schema import DecodingConfig
from machine_translation.inference.batch_translation import (
    Translation,
    translate_token_ids,
)
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.inference.sampling import Sampling
from machine_translation.runtime.devices import (
    resolve_device,
    resolve_inference_precision,
)

logger = logging.getLogger(__name__)


class Translator:
    """Translates text with a checkpoint.

    Args:
        checkpoint: A translation checkpoint (``best.pt``, ``last.pt``, averaged).
        device: ``auto``, ``cpu``, ``cuda``...
        precision: ``auto``, ``bf16``, ``fp16``, ``fp32``, or ``int8`` (CPU only:
            int8 linear layers, ``inference.int8``).
        decoding: Beam size (1 = greedy), length penalty, output length limit and
            batch size; None reads ``conf/decoding/default.yaml``.
        nbest: Translations per sentence (at most the beam size).
        sampling: Sample translations instead of searching (temperature, top-k,
            top-p; see :class:`~machine_translation.inference.sampling.Sampling`);
            needs beam size 1 and one worker.
        seed: Seed of the sampling generator, for reproducible samples; None
            draws a fresh one.
        adapter: LoRA adapters to merge into ``checkpoint`` (their base).
        workers: Batches decoded at once (on a CPU, share the cores among them
            first: ``runtime.devices.share_cpu_threads``).
        compiled: Decode with programs compiled ahead of time
            (:mod:`machine_translation.inference.fast`), kept in a ``compiled``
            folder beside the checkpoint and built there first if missing. CPU
            only; several ``workers`` are then processes (:meth:`close` ends them).

    Raises:
        CheckpointError: the checkpoint is missing, unreadable or not a translation one.
        CompileError: ``compiled`` and a program could not be compiled.
        ValueError: settings that do not go together.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        precision: str = "auto",
        decoding: DecodingConfig | None = None,
        nbest: int = 1,
        sampling: Sampling | None = None,
        seed: int | None = None,
        adapter: str | Path | None = None,
        workers: int = 1,
        compiled: bool = False,
    ) -> None:
        self.decoding = decoding or load_decoding_config()
        beam_size = self.decoding.beam_size
        if not 1 <= nbest <= beam_size:
            raise ValueError(
                f"need 1 <= nbest <= beam_size; got beam_size={beam_size}, "
                f"nbest={nbest}"
            )
        if sampling is not None and beam_size != 1:
            raise ValueError(f"sampling needs beam_size=1, got beam_size={beam_size}")
        if workers < 1 or (sampling is not None and workers != 1):
            raise ValueError(f"workers={workers}: need >= 1, and 1 for sampling")
        self.device = resolve_device(device)
        self.precision = resolve_inference_precision(precision, self.device)
        model, self.tokenizer, _ = load_translation_model(
            checkpoint, self.device, adapter
        )
        self.max_positions = model.config.max_positions
        # The loaded model, for analyses (serving's alignment): the one decoded with,
        # except that int8 and the compiled programs decode from copies of it.
        self.model = model
        self.decoder = batch_decoder(
            model,
            self.precision,
            workers=workers,
            compiled=compiled,
            directory=Path(adapter or checkpoint).parent / "compiled",
            beam_sizes=[beam_size],
        )
        self.nbest, self.sampling = nbest, sampling
        self.generator = torch.Generator(self.device)
        if seed is None:
            self.generator.seed()  # torch's default seed is a constant
        else:
            self.generator.manual_seed(seed)

    def translate(
        self, sentences: Sequence[str], first_index: int = 0
    ) -> list[list[Translation]]:
        """``nbest`` translations per sentence; an empty sentence gives ``nbest``
        times ``""``. ``first_index``: the first sentence's index in the whole input
        (for the warnings' sentence numbers)."""
        limit = self.max_positions
        encoded = self.tokenizer.encode_batch(list(sentences))
        results = [[Translation("")] * self.nbest for _ in sentences]
        to_translate = []
        for index, ids in enumerate(encoded):
            if not ids:
                continue
            if len(ids) > limit:
                logger.warning(
                    "sentence %d has %d tokens; the model reads at most %d, so it was "
                    "truncated",
                    first_index + index + 1,
                    len(ids),
                    limit,
                )
                encoded[index] = ids[:limit]
            to_translate.append(index)
        translations = translate_token_ids(
            self.decoder,
            self.tokenizer,
            [encoded[i] for i in to_translate],
            self.device,
            self.precision,
            self.decoding,
            nbest=self.nbest,
            sampling=self.sampling,
            generator=self.generator,
        )
        for index, translation in zip(to_translate, translations, strict=True):
            results[index] = translation
        return results

    def close(self) -> None:
        """Ends the decoder's threads or worker processes, if any."""
        self.decoder.close()
