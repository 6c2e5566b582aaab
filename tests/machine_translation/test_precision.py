"""Precision: ``auto`` picks what the hardware computes natively, and a tiny model
learns under bf16 autocast (what ``auto`` gives on CPUs with AVX-512 BF16 or AMX)."""

import pytest
import torch
import torch.nn.functional as F

from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime import devices
from machine_translation.runtime.devices import autocast, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"  # an explicit choice stays


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_precision("auto", torch.device("cuda")) == expected


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision='fp8'"):
        resolve_precision("fp8", CPU)


@pytest.mark.slow  # bf16 is emulated on CPUs without AVX-512 BF16
def test_a_tiny_model_learns_under_bf16_autocast(tiny_config):
    """Copy the source (3-6 symbols): the loss falls from ln(13) to near zero."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny_config(vocab_size=13, d_model=64, d_ff=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        source = torch.randint(3, 13, (32, 5), generator=generator)
        target = torch.cat([torch.ones(32, 1, dtype=torch.long), source], dim=1)
        labels = torch.cat([source, torch.full((32, 1), 2)], dim=1)
        with autocast(CPU, "bf16"):
            logits = model(source, None, target)
        assert logits.dtype == torch.bfloat16  # the products really ran in bf16
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32
    assert loss.item() < 0.1
