"""The cross-attention alignment of a translation, for the page's heat map.

The decoder's cross-attention says, for each target position, how much it read each
source token. Forcing the chosen translation through the decoder (teacher forcing,
:meth:`~machine_translation.model.Seq2SeqTransformer.forward_with_cross_attention`)
gives these weights for every layer; averaged over the heads they form one
``(target tokens, source tokens)`` map per layer. Row t is the position that
predicted target token t (the last row predicted the end of the sentence).

Shapes: ``L`` decoder layers, ``t`` target tokens (+1 for the end), ``s`` source
tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.model import Seq2SeqTransformer

END = "</s>"  # the label of the last row: the position that predicted EOS


@dataclass
class Alignment:
    """Cross-attention of one translation, averaged over heads.

    Attributes:
        source_tokens: The source's subwords as text (``s``).
        target_tokens: The translation's subwords as text, then :data:`END`
            (``t + 1``).
        weights: ``(L, t + 1, s)`` nested lists; each row sums to 1.
    """

    source_tokens: list[str]
    target_tokens: list[str]
    weights: list[list[list[float]]]


@torch.inference_mode()
def cross_attention_alignment(
    model: Seq2SeqTransformer, tokenizer: BPETokenizer, source: str, target: str
) -> Alignment:
    """The alignment of ``target`` (a translation of ``source``) under ``model``.

    Both texts are tokenized as the translator does (the source truncated to the
    model's ``max_positions``); the target is re-tokenized from its text.
    """
    limit = model.config.max_positions
    source_ids = tokenizer.encode(source)[:limit]
    target_ids = tokenizer.encode(target)[: limit - 1]
    if not source_ids:  # nothing to read (blank text)
        return Alignment([], [], [])
    device = next(model.parameters()).device
    sources = torch.tensor([source_ids], device=device)  # (1, s)
    targets = torch.tensor([[tokenizer.bos_id, *target_ids]], device=device)
    _, weights = model.forward_with_cross_attention(sources, None, targets)
    per_layer = weights[:, 0].float().mean(dim=1)  # (L, h, t+1, s) → (L, t+1, s)
    return Alignment(
        token_texts(tokenizer, source_ids),
        [*token_texts(tokenizer, target_ids), END],
        per_layer.double().round(decimals=4).tolist(),
    )


def token_texts(tokenizer: BPETokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's share of the decoded text, a leading space shown as ``▁``.

    Byte-level subwords may split a character (``é`` is two bytes): the character
    goes to the token that completes it, and the token before shows ``·``.
    """
    texts, done = [], ""
    for end in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:end])
        complete = decoded.rstrip("\ufffd")  # an unfinished character decodes as �
        piece = complete[len(done) :] if complete.startswith(done) else decoded
        done = complete if complete.startswith(done) else decoded
        texts.append(piece.replace(" ", "▁") or "·")
    return texts
