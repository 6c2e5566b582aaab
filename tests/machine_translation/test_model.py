import io

import pytest
import torch

from machine_translation.model import Seq2SeqTransformer, count_parameters

VARIANTS = {
    "sinusoidal-mha": {"positions": "sinusoidal"},
    "learned-gqa": {"positions": "learned", "n_kv_heads": 2},
    "rope-mqa-rmsnorm-swiglu": {
        "positions": "rope",
        "n_kv_heads": 1,
        "norm": "rmsnorm",
        "activation": "swiglu",
    },
    "none-post-gelu": {
        "positions": "none",
        "norm_placement": "post",
        "activation": "gelu",
    },
}


def padded(ids, extra):
    return torch.cat([ids, torch.zeros(ids.size(0), extra, dtype=torch.long)], dim=1)


def mask_of(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_shapes(tiny_config, n_kv_heads):
    model = Seq2SeqTransformer(tiny_config(n_kv_heads=n_kv_heads))
    source, target = torch.randint(1, 37, (3, 7)), torch.randint(1, 37, (3, 5))
    assert model.encode(source).shape == (3, 7, 32)
    assert model(source, None, target).shape == (3, 5, 37)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_causality(tiny_config, variant):
    model = Seq2SeqTransformer(tiny_config(**variant)).eval()
    source, target = torch.randint(1, 37, (1, 6)), torch.randint(1, 37, (1, 7))
    logits = model(source, None, target)
    for t in range(6):
        changed = target.clone()
        changed[0, t + 1] = (changed[0, t + 1] % 36) + 1
        torch.testing.assert_close(
            model(source, None, changed)[:, : t + 1], logits[:, : t + 1]
        )


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_padding_leaves_real_logits_unchanged(tiny_config, variant):
    model = Seq2SeqTransformer(tiny_config(**variant)).eval()
    source, target = torch.randint(1, 37, (1, 6)), torch.randint(1, 37, (1, 4))
    alone = model(source, None, target)
    logits = model(
        padded(source, 5), mask_of([6], 11), padded(target, 3), mask_of([4], 7)
    )
    torch.testing.assert_close(logits[:, :4], alone, atol=1e-5, rtol=1e-5)


def test_sentence_in_a_padded_batch_equals_sentence_alone(tiny_config):
    model = Seq2SeqTransformer(tiny_config(n_kv_heads=2)).eval()
    sources = [torch.randint(1, 37, (n,)) for n in (3, 8, 5)]
    targets = [torch.randint(1, 37, (n,)) for n in (6, 2, 4)]
    source_batch = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    target_batch = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
    logits = model(
        source_batch, mask_of([3, 8, 5], 8), target_batch, mask_of([6, 2, 4], 6)
    )
    for row, (source, target) in enumerate(zip(sources, targets, strict=True)):
        alone = model(source[None], None, target[None])[0]
        torch.testing.assert_close(
            logits[row, : len(target)], alone, atol=1e-5, rtol=1e-5
        )


def test_fully_padded_rows_give_no_nan(tiny_config):
    model = Seq2SeqTransformer(tiny_config())
    source, target = torch.randint(1, 37, (2, 5)), torch.randint(1, 37, (2, 4))
    source_mask, target_mask = mask_of([5, 0], 5), mask_of([4, 0], 4)
    logits = model(source, source_mask, target, target_mask)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )


def decode_step_by_step(model, source, source_mask, target, reorder=None):
    with torch.no_grad():
        memory = model.encode(source, source_mask)
        cache = model.new_cache()
        steps = [model.decode_step(target[:, :2], memory, source_mask, cache)]
        if reorder is not None:  # reorder as beam search would, then continue
            cache.reorder(reorder)
            memory, source_mask, target = (
                memory[reorder],
                source_mask[reorder],
                target[reorder],
            )
            steps = [steps[0][reorder]]
        for t in range(2, target.size(1)):
            steps.append(
                model.decode_step(target[:, t : t + 1], memory, source_mask, cache)
            )
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_cached_decoding_equals_full_forward(tiny_config, variant):
    model = Seq2SeqTransformer(tiny_config(**variant)).eval()
    source, target = torch.randint(1, 37, (3, 7)), torch.randint(1, 37, (3, 6))
    source_mask = mask_of([7, 4, 6], 7)
    full = model(source, source_mask, target)
    cached = decode_step_by_step(model, source, source_mask, target)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_cached_decoding_after_reordering_the_batch(tiny_config, variant):
    model = Seq2SeqTransformer(tiny_config(**variant)).eval()
    source, target = torch.randint(1, 37, (3, 7)), torch.randint(1, 37, (3, 6))
    source_mask = mask_of([7, 4, 6], 7)
    order = torch.tensor([2, 0, 0, 1])  # permute, duplicate (beam split) and grow
    full = model(source[order], source_mask[order], target[order])
    cached = decode_step_by_step(model, source, source_mask, target, reorder=order)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_attention_pass_scores_as_forward(tiny_config, variant):
    model = Seq2SeqTransformer(tiny_config(**VARIANTS[variant])).eval()
    source, target = torch.randint(4, 37, (2, 7)), torch.randint(4, 37, (2, 5))
    source_mask = mask_of([7, 4], 7)
    expected = model(source, source_mask, target)
    logits, weights = model.forward_with_cross_attention(source, source_mask, target)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert weights.shape == (model.config.decoder_layers, 2, 4, 5, 7)


def test_shared_embedding_is_one_parameter_counted_once(tiny_config):
    model = Seq2SeqTransformer(tiny_config(share_embeddings=True))
    shared = model.encoder.embedding.tokens.weight
    assert shared is model.decoder.embedding.tokens.weight
    assert sum(p is shared for p in model.parameters()) == 1
    untied = Seq2SeqTransformer(tiny_config(share_embeddings=False))
    assert count_parameters(untied) - count_parameters(model) == shared.numel()


def test_tying_survives_a_state_dict_round_trip(tiny_config):
    config = tiny_config()
    model = Seq2SeqTransformer(config).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = Seq2SeqTransformer(config).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert (
        restored.encoder.embedding.tokens.weight
        is restored.decoder.embedding.tokens.weight
    )
    source, target = torch.randint(1, 37, (2, 5)), torch.randint(1, 37, (2, 4))
    torch.testing.assert_close(
        restored(source, None, target), model(source, None, target)
    )
    # Training the restored model moves encoder input, decoder input and head together.
    restored.train()
    restored(source, None, target).sum().backward()
    with torch.no_grad():
        for p in restored.parameters():
            p -= 0.1 * p.grad if p.grad is not None else 0
    assert torch.equal(
        restored.encoder.embedding.tokens.weight,
        restored.decoder.embedding.tokens.weight,
    )


def test_separate_source_vocabulary(tiny_config):
    model = Seq2SeqTransformer(
        tiny_config(share_embeddings=False, source_vocab_size=50)
    )
    assert model.encoder.embedding.tokens.num_embeddings == 50
    assert model.decoder.embedding.tokens.num_embeddings == 37
    logits = model(torch.randint(1, 50, (2, 5)), None, torch.randint(1, 37, (2, 3)))
    assert logits.shape == (2, 3, 37)


def test_parameter_count_matches_a_hand_count(tiny_config):
    v, d, h_kv, d_h, f = 11, 8, 1, 4, 16
    config = tiny_config(
        vocab_size=v,
        d_model=d,
        n_heads=2,
        n_kv_heads=h_kv,
        d_ff=f,
        encoder_layers=1,
        decoder_layers=1,
        positions="sinusoidal",
    )
    attention = (d * d + d) + 2 * (d * h_kv * d_h + h_kv * d_h) + (d * d + d)
    layer_norm = 2 * d
    feedforward = (d * f + f) + (f * d + d)
    encoder_block = attention + feedforward + 2 * layer_norm
    decoder_block = 2 * attention + feedforward + 3 * layer_norm
    final_norms = 2 * layer_norm
    embedding = v * d  # shared by encoder, decoder and LM head: counted once
    expected = embedding + encoder_block + decoder_block + final_norms
    assert count_parameters(Seq2SeqTransformer(config)) == expected == 1408
