"""One LoRA layer: starts as its base, merges exactly, adapts output slices apart."""

import pytest
import torch
from torch import nn

from encoder_transformer.lora_linear import LoRALinear


def randomize(layer: LoRALinear) -> None:
    """Non-zero B (and A) as after training, so that the adapter changes outputs."""
    with torch.no_grad():
        layer.lora_A.normal_(std=0.2)
        layer.lora_B.normal_(std=0.2)


def test_starts_as_its_frozen_base_and_trains_only_the_adapter():
    base = nn.Linear(6, 5)
    adapted = LoRALinear(base, rank=2, alpha=4.0)
    inputs = torch.randn(3, 6)
    torch.testing.assert_close(adapted(inputs), base(inputs))  # B = 0
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]


def test_merged_layer_equals_the_adapted_layer():
    adapted = LoRALinear(nn.Linear(6, 5), rank=2, alpha=4.0)
    randomize(adapted)
    merged = adapted.merge()
    inputs = torch.randn(3, 6)
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(inputs), adapted(inputs))
    torch.testing.assert_close(merged.weight, adapted.weight)


def test_gate_and_up_adapters_equal_adapters_on_separate_matrices():
    fused = nn.Linear(6, 2 * 4)
    adapted = LoRALinear(fused, rank=2, alpha=2.0, slices=[(0, 4), (4, 8)])
    randomize(adapted)
    gate, up = nn.Linear(6, 4), nn.Linear(6, 4)
    with torch.no_grad():  # the same weights, split into two layers
        for part, layer in enumerate((gate, up)):
            layer.weight.copy_(fused.weight[4 * part : 4 * part + 4])
            layer.bias.copy_(fused.bias[4 * part : 4 * part + 4])
    separate = [LoRALinear(layer, rank=2, alpha=2.0) for layer in (gate, up)]
    with torch.no_grad():
        for part, lora in enumerate(separate):
            lora.lora_A.copy_(adapted.lora_A[2 * part : 2 * part + 2])
            lora.lora_B.copy_(adapted.lora_B[4 * part : 4 * part + 4])
    inputs = torch.randn(3, 6)
    expected = torch.cat([lora(inputs) for lora in separate], dim=-1)
    torch.testing.assert_close(adapted(inputs), expected)


def test_slices_outside_the_output_rows_are_rejected():
    with pytest.raises(ValueError, match="fall outside 4 output rows"):
        LoRALinear(nn.Linear(6, 4), rank=2, alpha=2.0, slices=[(2, 6)])
