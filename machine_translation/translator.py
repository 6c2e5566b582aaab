"""From text to translations with a trained model: batching, search, detokenization.

:func:`translate_token_ids` is the engine that validation, ``evaluate`` and
``translate`` share: it sorts sentences by length so that batches waste little on
padding, runs greedy (beam size 1) or beam search, and puts the results back in the
input order. :class:`Translator` adds what text input needs: loading a checkpoint,
tokenizing, empty lines, and sources longer than the model can read.

Several batches can be decoded at once, each on a thread of its own (``workers``,
CTranslate2's ``inter_threads``). A decoding step is many small operations, and two
cores each running a whole batch on its own waste less time waiting for each other
than both cores sharing every small operation. PyTorch's kernels release Python's
interpreter lock, so the threads do run in parallel; give each its share of the
cores (``torch.set_num_threads(cores // workers)``, as the commands do). Compiled
programs hold that lock, so with them the workers are processes
(:mod:`machine_translation.decoding_processes`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from machine_translation.checkpoint import load_translation_model
from machine_translation.compiled_step import CompiledStep, for_compiled_inference
from machine_translation.data import collate
from machine_translation.decoding_processes import DecodingProcesses
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime import (
    for_inference,
    inference_precision,
    resolve_device,
    resolve_precision,
)
from machine_translation.search import Sampling, beam_search, greedy_search
from machine_translation.tokenizer import BPETokenizer

logger = logging.getLogger(__name__)


@dataclass
class Translation:
    """One output: the text and, from beam search, its length-normalized score."""

    text: str
    score: float | None = None


# A batch's candidates: for each source, (token ids, beam score or None) pairs.
Candidates = list[list[tuple[list[int], float | None]]]


@torch.no_grad()  # (grad mode and autocast are per thread: set here)
def search_batch(
    model: Seq2SeqTransformer,
    sources: Sequence[Sequence[int]],
    *,
    special_ids: tuple[int, int, int],
    device: torch.device,
    precision: str,
    beam_size: int = 1,
    nbest: int = 1,
    alpha: float = 1.0,
    max_length_a: float = 1.5,
    max_length_b: int = 10,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
) -> Candidates:
    """Searches the translations of one batch of sources (token ids, no BOS/EOS).

    ``special_ids`` are ``(pad_id, bos_id, eos_id)``; the rest as
    :func:`translate_token_ids`. Returns, per source, the candidates' token ids
    (and beam scores; None from greedy search or sampling).
    """
    pad_id, bos_id, eos_id = special_ids
    batch = collate(
        sources, [[] for _ in sources], pad_id=pad_id, bos_id=bos_id, eos_id=eos_id
    ).to(device)
    settings = {
        "bos_id": bos_id,
        "eos_id": eos_id,
        "pad_id": pad_id,
        "max_length_a": max_length_a,
        "max_length_b": max_length_b,
        "max_length": model.config.max_positions,
    }
    with inference_precision(model, device, precision):
        if beam_size == 1:
            outputs = greedy_search(
                model,
                batch.source_ids,
                batch.source_mask,
                sampling=sampling,
                generator=generator,
                **settings,
            )
            return [[(tokens, None)] for tokens in outputs]
        hypotheses = beam_search(
            model,
            batch.source_ids,
            batch.source_mask,
            beam_size=beam_size,
            nbest=nbest,
            alpha=alpha,
            **settings,
        )
        return [[(h.tokens, h.score) for h in row] for row in hypotheses]


def translate_token_ids(
    model: Seq2SeqTransformer,
    tokenizer: BPETokenizer,
    source_ids: Sequence[Sequence[int]],
    device: torch.device,
    precision: str = "fp32",
    *,
    beam_size: int = 1,
    nbest: int = 1,
    alpha: float = 1.0,
    batch_size: int = 64,
    max_length_a: float = 1.5,
    max_length_b: int = 10,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    workers: int = 1,
    processes: DecodingProcesses | None = None,
) -> list[list[Translation]]:
    """Translations of tokenized sources, in input order; ``nbest`` per source.

    Args:
        model: The model, on ``device``.
        tokenizer: Its tokenizer.
        source_ids: Token ids per sentence (no BOS/EOS), each non-empty and at most
            ``model.config.max_positions`` long.
        device: Where to compute.
        precision: ``fp32``, ``bf16`` or ``fp16``: autocast if the weights are fp32
            (validation while training), else the weights' own precision.
        beam_size: 1 for greedy search, more for beam search.
        nbest: Translations per source (beam search only).
        alpha: Beam search length penalty.
        batch_size: Sentences per batch (beams multiply the work).
        max_length_a, max_length_b: Output length limit ``a · source length + b``.
        sampling: Sample each token instead of searching (needs ``beam_size=1``).
        generator: Random generator for ``sampling``.
        workers: Batches decoded at once, each on its own thread (the outputs are
            the same; on a CPU, share the cores among them: see the module's
            docstring). Sampling needs 1, so that a seed gives the same samples.
        processes: Decode on these worker processes (with compiled programs)
            instead of with ``model`` here; ``workers`` is then ignored.
    """
    if sampling is not None and beam_size != 1:
        raise ValueError(f"sampling draws one output: use beam_size=1, not {beam_size}")
    if workers < 1 or (sampling is not None and workers != 1):
        raise ValueError(f"workers={workers}: need >= 1, and 1 for sampling")
    if sampling is not None and processes is not None:
        raise ValueError("sampling runs in this process, not on worker processes")
    if workers > 1 and isinstance(model.decode_step, CompiledStep):
        raise ValueError(
            f"workers={workers}: a compiled step holds Python's interpreter lock "
            "while it runs, so threads would take turns; decode on worker "
            "processes instead (processes=DecodingProcesses(...))"
        )
    model.eval()
    order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]))
    batches = [
        order[start : start + batch_size] for start in range(0, len(order), batch_size)
    ]
    sources = [[source_ids[i] for i in rows] for rows in batches]
    options = {
        "special_ids": (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id),
        "device": device,
        "precision": precision,
        "beam_size": beam_size,
        "nbest": nbest,
        "alpha": alpha,
        "max_length_a": max_length_a,
        "max_length_b": max_length_b,
    }
    if processes is not None:
        decoded = processes.map(search_batch, sources, **options)
    else:
        search = partial(
            search_batch, model, sampling=sampling, generator=generator, **options
        )
        if workers == 1:
            decoded = [search(batch) for batch in sources]
        else:
            with ThreadPoolExecutor(workers) as pool:
                decoded = list(pool.map(search, sources))
    results: list[list[Translation]] = [[] for _ in source_ids]
    for rows, found in zip(batches, decoded, strict=True):
        for row, candidates in zip(rows, found, strict=True):
            texts = tokenizer.decode_batch([tokens for tokens, _ in candidates])
            results[row] = [
                Translation(text, score)
                for text, (_, score) in zip(texts, candidates, strict=True)
            ]
    return results


class Translator:
    """Translates text with a checkpoint.

    Args:
        checkpoint: A translation checkpoint (``best.pt``, ``last.pt``, averaged).
        device: ``auto``, ``cpu``, ``cuda``...
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        beam_size: 1 for greedy search.
        nbest: Translations per sentence.
        alpha: Beam search length penalty.
        batch_size: Sentences per batch.
        sampling: Sample translations instead of searching (temperature, top-k,
            top-p; see :class:`~machine_translation.search.Sampling`); needs
            ``beam_size=1``.
        seed: Seed of the sampling generator, for reproducible samples; None
            draws a fresh one.
        adapter: LoRA adapters to merge into ``checkpoint`` (their base).
        workers: Batches decoded at once, each on its own thread (on a CPU, share
            the cores among them first: ``runtime.share_cpu_threads``).
        compiled: Encode and decode with programs compiled ahead of time
            (:mod:`machine_translation.compiled_step`) for ``beam_size``, kept in a
            ``compiled`` folder beside the checkpoint and built there first if
            missing. CPU only. With several ``workers``, each is a process with
            PyTorch's thread count of this one (:meth:`close` ends them).

    Raises:
        CheckpointError: the checkpoint is missing, unreadable or not a translation one.
        CompileError: ``compiled`` and a program could not be compiled.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        precision: str = "auto",
        beam_size: int = 5,
        nbest: int = 1,
        alpha: float = 1.0,
        batch_size: int = 64,
        sampling: Sampling | None = None,
        seed: int | None = None,
        adapter: str | Path | None = None,
        workers: int = 1,
        compiled: bool = False,
    ) -> None:
        if beam_size < 1 or not 1 <= nbest <= beam_size:
            raise ValueError(
                f"need beam_size >= 1 and 1 <= nbest <= beam_size; got "
                f"beam_size={beam_size}, nbest={nbest}"
            )
        if sampling is not None and beam_size != 1:
            raise ValueError(f"sampling needs beam_size=1, got beam_size={beam_size}")
        if workers < 1 or (sampling is not None and workers != 1):
            raise ValueError(f"workers={workers}: need >= 1, and 1 for sampling")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        model, self.tokenizer, _ = load_translation_model(
            checkpoint, self.device, adapter
        )
        self.processes: DecodingProcesses | None = None
        folder = Path(adapter or checkpoint).parent / "compiled"
        if compiled and workers > 1:  # the workers decode; this model gives sizes
            self.processes = DecodingProcesses(
                model,
                self.precision,
                folder,
                [beam_size],
                workers,
                threads=torch.get_num_threads(),
            )
            self.model = model
        elif compiled:
            self.model = for_compiled_inference(
                model, self.precision, folder, [beam_size]
            )
        else:
            self.model = for_inference(model, self.precision)
        self.beam_size, self.nbest, self.alpha = beam_size, nbest, alpha
        self.batch_size, self.workers = batch_size, workers
        self.sampling = sampling
        self.generator = torch.Generator(self.device)
        if seed is None:
            self.generator.seed()  # torch's default seed is a constant
        else:
            self.generator.manual_seed(seed)

    def translate(self, sentences: Sequence[str]) -> list[list[Translation]]:
        """``nbest`` translations per sentence; an empty sentence gives ``""``."""
        limit = self.model.config.max_positions
        encoded = self.tokenizer.encode_batch(list(sentences))
        results: list[list[Translation]] = [[Translation("")] for _ in sentences]
        to_translate = []
        for index, ids in enumerate(encoded):
            if not ids:
                continue
            if len(ids) > limit:
                logger.warning(
                    "sentence %d has %d tokens; the model reads at most %d, so it was "
                    "truncated",
                    index + 1,
                    len(ids),
                    limit,
                )
                encoded[index] = ids[:limit]
            to_translate.append(index)
        translations = translate_token_ids(
            self.model,
            self.tokenizer,
            [encoded[i] for i in to_translate],
            self.device,
            self.precision,
            beam_size=self.beam_size,
            nbest=self.nbest,
            alpha=self.alpha,
            batch_size=self.batch_size,
            sampling=self.sampling,
            generator=self.generator,
            workers=self.workers,
            processes=self.processes,
        )
        for index, translation in zip(to_translate, translations, strict=True):
            results[index] = translation
        return results

    def close(self) -> None:
        """Ends the worker processes, if any (they also end with this process)."""
        if self.processes is not None:
            self.processes.close()
