"""The alignment behind the page's heat map, from the smoke model."""

from __future__ import annotations

import pytest
import torch

from machine_translation.serving.alignment import (
    END,
    cross_attention_alignment,
    token_texts,
)


@pytest.mark.parametrize(
    "text", ["Un garçon à l'école, où ça ?", "Ça coûte 5 € 😀.", "A dog runs."]
)
def test_token_texts_put_together_give_the_text(serve_translator, text):
    tokenizer = serve_translator.tokenizer
    ids = tokenizer.encode(text)
    pieces = token_texts(tokenizer, ids)
    assert len(pieces) == len(ids)
    joined = "".join(piece.replace("·", "") for piece in pieces).replace("▁", " ")
    assert joined == tokenizer.decode(ids)


def test_alignment_is_the_models_cross_attention_averaged_over_heads(serve_translator):
    model, tokenizer = serve_translator.model, serve_translator.tokenizer
    alignment = cross_attention_alignment(model, tokenizer, "A dog runs.", "Un chien")
    source_ids, target_ids = (
        tokenizer.encode("A dog runs."),
        tokenizer.encode("Un chien"),
    )
    assert len(alignment.source_tokens) == len(source_ids)
    assert alignment.target_tokens[-1] == END
    assert len(alignment.target_tokens) == len(target_ids) + 1
    _, weights = model.forward_with_cross_attention(
        torch.tensor([source_ids]),
        None,
        torch.tensor([[tokenizer.bos_id, *target_ids]]),
    )
    expected = weights[:, 0].mean(dim=1)  # (layers, t + 1, s)
    torch.testing.assert_close(
        torch.tensor(alignment.weights, dtype=torch.float32),
        expected,
        atol=1e-4,
        rtol=0,
    )


def test_a_blank_source_has_no_alignment(serve_translator):
    alignment = cross_attention_alignment(
        serve_translator.model, serve_translator.tokenizer, "   ", ""
    )
    assert (alignment.source_tokens, alignment.weights) == ([], [])
