"""Scoring a model on a test set: sacreBLEU (cased and lower-cased) and chrF."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import sacrebleu
import torch

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import TestSet
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder


@dataclass
class Scores:
    bleu: float
    bleu_signature: str
    bleu_lowercase: float
    bleu_lowercase_signature: str
    chrf: float
    chrf_signature: str


def score(hypotheses: list[str], references: list[list[str]]) -> Scores:
    """sacreBLEU BLEU (cased and lower-cased) and chrF against 1+ references each.

    >>> round(score(["le chat est là"], [["le chat est là"]]).bleu, 1)
    100.0
    """
    most = max((len(refs) for refs in references), default=1)
    # sacreBLEU takes one stream per reference position; None where a sentence has
    # fewer references than the most.
    streams = [
        [refs[i] if i < len(refs) else None for refs in references] for i in range(most)
    ]
    bleu, bleu_lc, chrf = (
        sacrebleu.BLEU(),
        sacrebleu.BLEU(lowercase=True),
        sacrebleu.CHRF(),
    )
    return Scores(
        bleu.corpus_score(hypotheses, streams).score,
        str(bleu.get_signature()),
        bleu_lc.corpus_score(hypotheses, streams).score,
        str(bleu_lc.get_signature()),
        chrf.corpus_score(hypotheses, streams).score,
        str(chrf.get_signature()),
    )


def evaluate(
    checkpoint: Path,
    test_sets: list[TestSet],
    device: torch.device,
    precision: str,
    decoding: DecodingConfig,
    beam_sizes: list[int],
    output_dir: Path | None = None,
    adapter: Path | None = None,
    workers: int = 1,
    compiled: bool = False,
) -> dict[tuple[str, int], Scores]:
    """Translates each test set with each beam size (1 = greedy) and scores it.

    ``decoding``: the other search settings (length penalty, output length,
    batch size). ``adapter``: LoRA adapters to merge into ``checkpoint`` (their
    base) first. ``workers``: batches decoded at once (share the CPU threads among
    them first, ``runtime.devices.share_cpu_threads``). ``compiled``: decode with
    programs compiled ahead of time (CPU; :mod:`machine_translation.inference.fast`),
    kept beside the checkpoint.

    Returns:
        Scores by (test set name, beam size); hypotheses go to ``output_dir``.
    """
    model, tokenizer, _ = load_translation_model(checkpoint, device, adapter)
    limit = model.config.max_positions
    results = {}
    with batch_decoder(
        model,
        precision,
        workers=workers,
        compiled=compiled,
        directory=(adapter or checkpoint).parent / "compiled",
        beam_sizes=beam_sizes,
    ) as decoder:
        for test_set in test_sets:
            sources = tokenizer.encode_batch(test_set.sources)
            # A blank source line gets a blank hypothesis, as in translate.
            kept = [i for i, ids in enumerate(sources) if ids]
            source_ids = [sources[i][:limit] for i in kept]
            for beam_size in beam_sizes:
                translations = translate_token_ids(
                    decoder,
                    tokenizer,
                    source_ids,
                    device,
                    precision,
                    replace(decoding, beam_size=beam_size),
                )
                hypotheses = [""] * len(sources)
                for index, candidates in zip(kept, translations, strict=True):
                    hypotheses[index] = candidates[0].text
                if output_dir is not None:
                    output_dir.mkdir(parents=True, exist_ok=True)
                    (output_dir / f"{test_set.name}.beam{beam_size}.fr").write_text(
                        "".join(h + "\n" for h in hypotheses), encoding="utf-8"
                    )
                scores = score(hypotheses, test_set.references)
                results[test_set.name, beam_size] = scores
    return results
