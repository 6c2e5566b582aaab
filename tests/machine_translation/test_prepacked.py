import copy

import pytest
import torch
from torch import nn

from encoder_transformer.attention import MultiHeadAttention
from machine_translation.model import Seq2SeqTransformer
from machine_translation.prepacked import (
    PrepackedLinear,
    can_prepack,
    fuse_self_attention_projections,
    prepack_linear_layers,
)
from machine_translation.runtime import for_inference
from machine_translation.search import beam_search, greedy_search

PAD, BOS, EOS = 0, 1, 2

needs_onednn_bf16 = pytest.mark.skipif(
    not can_prepack(torch.zeros(1, dtype=torch.bfloat16)),
    reason="this CPU/PyTorch build has no oneDNN bf16 support",
)


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (3, 1, 24), (2, 7, 24)])
def test_prepacked_linear_equals_linear(bias, shape):
    linear = nn.Linear(24, 40, bias=bias).bfloat16()
    packed = PrepackedLinear.from_linear(linear)
    inputs = torch.randn(shape).bfloat16()
    with torch.inference_mode():
        torch.testing.assert_close(packed(inputs), linear(inputs), atol=0, rtol=0)
    assert packed.weight is linear.weight and packed.bias is linear.bias


def tiny_model(tiny_config, **overrides):
    torch.manual_seed(0)
    return Seq2SeqTransformer(tiny_config(n_kv_heads=2, **overrides)).eval()


@needs_onednn_bf16
@pytest.mark.parametrize(
    "attention",
    [{}, {"attention": "latent", "kv_latent_dim": 16, "positions": "rope"}],
    ids=["gqa", "mla"],
)
def test_prepacked_model_translates_exactly_as_before(tiny_config, attention):
    model = tiny_model(tiny_config, **attention).bfloat16()
    packed = prepack_linear_layers(copy.deepcopy(model))
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert linears and not any(type(m) is nn.Linear for m in packed.modules())
    fused = [
        m for m in packed.modules() if getattr(m, "fused_projection", None) is not None
    ]
    self_attentions = len(model.encoder.blocks) + len(model.decoder.blocks)
    assert len(fused) == (0 if attention else self_attentions)  # MLA: none to fuse
    assert len([m for m in packed.modules() if isinstance(m, PrepackedLinear)]) == (
        len(linears) + 1 + len(fused)  # the tied output layer, fused projections
    )
    assert packed.state_dict().keys() >= model.state_dict().keys()
    sources = [torch.randint(3, 37, (n,)) for n in (4, 9, 6, 2, 7)]
    batch = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    mask = batch != PAD
    ids = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}
    assert greedy_search(packed, batch, mask, **ids) == greedy_search(
        model, batch, mask, **ids
    )
    for ours, reference in zip(
        beam_search(packed, batch, mask, beam_size=4, nbest=4, **ids),
        beam_search(model, batch, mask, beam_size=4, nbest=4, **ids),
        strict=True,
    ):
        assert [h.tokens for h in ours] == [h.tokens for h in reference]
        assert [h.score for h in ours] == [h.score for h in reference]


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_fused_self_attention_projection_equals_separate_ones(bias, n_kv_heads):
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4, n_kv_heads, bias=bias).bfloat16().eval()
    separate = prepack_linear_layers(attention)
    states = torch.randn(3, 5, 32).bfloat16()
    with torch.inference_mode():
        expected = separate.project_self_attention(states)
        fuse_self_attention_projections(separate)
        assert isinstance(separate.fused_projection, PrepackedLinear)
        fused = separate.project_self_attention(states)
    for got, want in zip(fused, expected, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@needs_onednn_bf16
def test_for_inference_prepacks_bf16_and_leaves_fp32_alone(tiny_config):
    bf16 = for_inference(tiny_model(tiny_config), "bf16")
    assert isinstance(bf16.decoder.output_projection, PrepackedLinear)
    assert not any(p.requires_grad for p in bf16.parameters())
    fp32 = for_inference(tiny_model(tiny_config), "fp32")
    assert fp32.decoder.output_projection is None
    assert not any(isinstance(m, PrepackedLinear) for m in fp32.modules())
