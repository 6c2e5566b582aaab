"""Where LoRA targets are: every name a config accepts names some layer."""

from torch import nn

from encoder_transformer.feedforward import SwiGLU
from encoder_transformer.latent_attention import MultiHeadLatentAttention
from encoder_transformer.lora_targets import (
    PROJECTIONS,
    TARGETS,
    Projection,
    projections_of,
)


def test_every_target_is_some_layer_and_every_layer_a_target():
    named = {target for table in PROJECTIONS.values() for target in table}
    assert named == set(TARGETS)


def test_fused_swiglu_layer_splits_into_gate_and_up_halves():
    table = projections_of(SwiGLU(8, 16, dropout=0.0, bias=True))
    assert table["gate"] == Projection("gate_and_up", 0, 2)
    assert table["up"] == Projection("gate_and_up", 1, 2)


def test_compressed_queries_are_adapted_at_their_up_projection():
    plain = MultiHeadLatentAttention(16, 2, kv_latent_dim=8)
    compressed = MultiHeadLatentAttention(16, 2, kv_latent_dim=8, q_latent_dim=4)
    assert projections_of(plain)["q"].attribute == "query"
    assert projections_of(compressed)["q"].attribute == "query.up"
    assert projections_of(nn.Linear(2, 2)) == {}
