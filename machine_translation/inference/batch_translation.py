"""From token ids to translations: sorted batches, search, detokenization.

:func:`translate_token_ids` is what validation, ``evaluate`` and ``translate``
share: it sorts sentences by length so that batches waste little on padding, hands
the batches to a decoder (:mod:`machine_translation.inference.decoders`) that runs
:func:`search_batch` on each, greedy (beam size 1), beam search or sampling, and
puts the results back in the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from machine_translation.config.schema import DecodingConfig
from machine_translation.data.batching import collate
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.inference.beam_search import beam_search
from machine_translation.inference.decoders import BatchDecoder, StepDecoder
from machine_translation.inference.greedy_search import greedy_search
from machine_translation.inference.sampling import Sampling
from machine_translation.runtime.devices import inference_precision


@dataclass
class Translation:
    """One output: the text and, from beam search, its length-normalized score."""

    text: str
    score: float | None = None


# A batch's candidates: for each source, (token ids, beam score or None) pairs.
Candidates = list[list[tuple[list[int], float | None]]]


@torch.no_grad()  # (grad mode and autocast are per thread: set here)
def search_batch(
    model: StepDecoder,
    sources: Sequence[Sequence[int]],
    *,
    special_ids: tuple[int, int, int],
    device: torch.device,
    precision: str,
    decoding: DecodingConfig,
    nbest: int = 1,
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
        "max_length_a": decoding.max_length_a,
        "max_length_b": decoding.max_length_b,
        "max_length": model.config.max_positions,
    }
    with inference_precision(model, device, precision):
        if decoding.beam_size == 1:
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
            beam_size=decoding.beam_size,
            nbest=nbest,
            alpha=decoding.length_penalty,
            **settings,
        )
        return [[(h.tokens, h.score) for h in row] for row in hypotheses]


def translate_token_ids(
    decoder: BatchDecoder,
    tokenizer: BPETokenizer,
    source_ids: Sequence[Sequence[int]],
    device: torch.device,
    precision: str,
    decoding: DecodingConfig,
    *,
    nbest: int = 1,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
) -> list[list[Translation]]:
    """Translations of tokenized sources, in input order; ``nbest`` per source.

    Args:
        decoder: Runs the searches (``InProcess(model)`` for a model here).
        tokenizer: The model's tokenizer.
        source_ids: Token ids per sentence (no BOS/EOS), each non-empty and at most
            ``max_positions`` long.
        device: Where to compute.
        precision: ``fp32``, ``bf16`` or ``fp16``: autocast if the weights are fp32
            (validation while training), else the weights' own precision.
        decoding: Beam size (1 = greedy), length penalty, output length limit
            ``a · source length + b``, sentences per batch.
        nbest: Translations per source (beam search only).
        sampling: Sample each token instead of searching (needs beam size 1 and a
            decoder in this process, so that a seed gives the same samples).
        generator: Random generator for ``sampling``.
    """
    if sampling is not None and decoding.beam_size != 1:
        raise ValueError(
            f"sampling draws one output: use beam_size=1, not {decoding.beam_size}"
        )
    if not 1 <= nbest <= decoding.beam_size:
        raise ValueError(f"nbest={nbest}: need 1 <= nbest <= {decoding.beam_size}")
    size = decoding.batch_size
    order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]))
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    options = {
        "special_ids": (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id),
        "device": device,
        "precision": precision,
        "decoding": decoding,
        "nbest": nbest,
    }
    if sampling is not None:  # (a generator stays in this process)
        options.update(sampling=sampling, generator=generator)
    sources = [[source_ids[i] for i in rows] for rows in batches]
    decoded = decoder.map(search_batch, sources, **options)
    results: list[list[Translation]] = [[] for _ in source_ids]
    for rows, found in zip(batches, decoded, strict=True):
        for row, candidates in zip(rows, found, strict=True):
            texts = tokenizer.decode_batch([tokens for tokens, _ in candidates])
            results[row] = [
                Translation(text, score)
                for text, (_, score) in zip(texts, candidates, strict=True)
            ]
    return results
