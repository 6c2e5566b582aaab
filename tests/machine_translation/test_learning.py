"""A tiny encoder-decoder must really learn: reverse a sequence, exactly."""

import pytest
import torch
import torch.nn.functional as F

from machine_translation.inference.beam_search import beam_search
from machine_translation.inference.greedy_search import greedy_search
from machine_translation.model import Seq2SeqTransformer

PAD, BOS, EOS, FIRST_SYMBOL, VOCAB = 0, 1, 2, 3, 13


def reverse_task(batch, generator):
    """Random sequences of 3-7 symbols; the target is the sequence reversed."""
    lengths = torch.randint(3, 8, (batch,), generator=generator).tolist()
    sources = [
        torch.randint(FIRST_SYMBOL, VOCAB, (n,), generator=generator) for n in lengths
    ]
    source_ids = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    targets = [
        torch.cat([torch.tensor([BOS]), s.flip(0), torch.tensor([EOS])])
        for s in sources
    ]
    target_ids = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
    return source_ids, source_ids != PAD, target_ids, sources


def train(model, steps, generator):
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # Decaying to zero lets the last steps settle instead of bouncing around.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    for _ in range(steps):
        source_ids, source_mask, target_ids, _ = reverse_task(64, generator)
        decoder_input, labels = target_ids[:, :-1], target_ids[:, 1:]
        logits = model(source_ids, source_mask, decoder_input, decoder_input != PAD)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss.item()


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {
            "positions": "learned",
            "n_kv_heads": 1,
            "norm": "rmsnorm",
            "activation": "swiglu",
        },
        # Multi-head latent attention: a 32-wide cached latent per token and layer,
        # a quarter of MHA's keys and values (2 x 64); queries compressed too. Slow
        # (~25 s); the fast suite has MLA learning in the GPT test.
        pytest.param(
            {"attention": "latent", "kv_latent_dim": 32, "q_latent_dim": 32},
            marks=pytest.mark.slow,
        ),
    ],
    # RoPE learns this too, but needs ~3x the steps: in an encoder-decoder it gives
    # cross-attention no position signal. The GPT test covers RoPE learning.
    ids=["sinusoidal-mha", "learned-mqa-rmsnorm-swiglu", "sinusoidal-mla"],
)
def test_tiny_model_learns_to_reverse_sequences(tiny_config, variant):
    generator = torch.Generator().manual_seed(0)
    config = tiny_config(vocab_size=VOCAB, d_model=64, d_ff=128, **variant)
    model = Seq2SeqTransformer(config)
    final_loss = train(model, steps=300, generator=generator)
    assert final_loss < 0.05  # from ln(13) ≈ 2.6 at the start

    model.eval()
    source_ids, source_mask, _, sources = reverse_task(50, generator)
    outputs = greedy_search(
        model, source_ids, source_mask, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )
    expected = [source.flip(0).tolist() for source in sources]
    assert outputs == expected

    # Beam search finds outputs at least as probable as greedy's (α = 0: raw scores).
    beams = beam_search(
        model,
        source_ids,
        source_mask,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        beam_size=5,
        alpha=0.0,
    )
    for source, output, (best,) in zip(source_ids, outputs, beams, strict=True):
        greedy_log_probability = sequence_log_probability(model, source, output)
        assert best.log_probability >= greedy_log_probability - 1e-4
    assert [hypotheses[0].tokens for hypotheses in beams] == expected


def sequence_log_probability(model, source_ids, tokens):
    """log p(tokens + EOS | source) under the model, by one full forward pass."""
    source_ids = source_ids[source_ids != PAD][None]
    decoder_input = torch.tensor([[BOS, *tokens]])
    labels = torch.tensor([[*tokens, EOS]])
    with torch.no_grad():
        log_probs = model(source_ids, None, decoder_input).log_softmax(-1)
    return log_probs.gather(-1, labels[..., None]).sum().item()
