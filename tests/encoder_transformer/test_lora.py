"""LoRA adapters: zero-init equality, merged == unmerged, only adapters train."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from decoder_transformer.gpt import GPT
from encoder_transformer.embedding import build_token_embedding
from encoder_transformer.encoder import TransformerEncoder
from encoder_transformer.lora import (
    LoRAConfig,
    add_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from encoder_transformer.lora_linear import LoRALinear
from machine_translation.model import Seq2SeqTransformer

# (model kind, activation, LoRA config): every model of the toolkit, both FFNs, the
# fused SwiGLU layer adapted whole and in part.
CASES = [
    ("seq2seq", "relu", LoRAConfig()),
    ("seq2seq", "swiglu", LoRAConfig(targets=("q", "k", "v", "o", "gate", "up"))),
    ("seq2seq", "relu", LoRAConfig(targets=("o", "up", "down"), where="decoder")),
    ("gpt", "swiglu", LoRAConfig(rank=2, targets=("v", "gate", "down"))),
    ("encoder", "gelu", LoRAConfig(rank=4, alpha=4.0, targets=("k", "up"))),
]
IDS = ["seq2seq-qv", "swiglu-fused", "decoder-only", "gpt-gate", "encoder"]


class Encoder(nn.Module):
    """The bare encoder stack with its own embedding, as a model of its own."""

    def __init__(self, config) -> None:
        super().__init__()
        embedding = build_token_embedding(config.vocab_size, config.d_model, 0)
        self.encoder = TransformerEncoder(config, embedding)

    def forward(self, ids):
        return self.encoder(ids)


def build(kind: str, config) -> tuple[nn.Module, Callable]:
    """A model and a function that runs it on a fixed batch."""
    source = torch.randint(1, config.vocab_size, (3, 7))
    target = torch.randint(1, config.vocab_size, (3, 5))
    if kind == "seq2seq":
        model = Seq2SeqTransformer(config)
        return model, lambda m: m(source, source != 0, target, target != 0)
    if kind == "gpt":
        return GPT(config), lambda m: m(target)
    return Encoder(config), lambda m: m(source)


def randomize_adapters(model: nn.Module) -> None:
    """Non-zero B (and A) as after training, so that the adapters change outputs."""
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.normal_(std=0.2)


@pytest.mark.parametrize(("kind", "activation", "lora"), CASES, ids=IDS)
def test_adapters_start_at_zero_so_outputs_are_unchanged(
    tiny_config, kind, activation, lora
):
    model, run = build(kind, tiny_config(activation=activation))
    before = run(model.eval())
    names = add_lora(model, lora)
    assert names and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(run(model), before)
    randomize_adapters(model)
    assert not torch.allclose(run(model), before)


@pytest.mark.parametrize(("kind", "activation", "lora"), CASES, ids=IDS)
def test_merged_model_equals_adapted_model_and_is_plain(
    tiny_config, kind, activation, lora
):
    config = tiny_config(activation=activation, dropout=0.1)
    model, run = build(kind, config)
    plain_names = set(model.state_dict())
    add_lora(model, lora)
    randomize_adapters(model)
    adapted = run(model.eval())
    layers = sum(isinstance(module, LoRALinear) for module in model.modules())
    assert merge_lora(model) == layers > 0
    torch.testing.assert_close(run(model), adapted, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == plain_names  # loads into a plain model
    assert all(p.requires_grad for p in model.parameters())


def test_only_adapter_parameters_get_gradients_and_change(tiny_config):
    model, run = build("seq2seq", tiny_config(activation="swiglu"))
    add_lora(model, LoRAConfig(targets=("q", "v", "gate", "down"), dropout=0.1))
    adapters = {id(p) for p in lora_parameters(model)}
    before = copy.deepcopy(model.state_dict())
    # Every parameter is given to the optimizer: the frozen ones must stay put anyway.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        run(model.train()).square().mean().backward()
        for parameter in model.parameters():
            has_gradient = parameter.grad is not None
            assert has_gradient == (id(parameter) in adapters)
        optimizer.step()
    after = model.state_dict()
    for name, tensor in before.items():
        is_adapter = name.endswith((".lora_A", ".lora_B"))
        assert torch.equal(after[name], tensor) != is_adapter, name


def test_a_fused_layer_adapts_only_the_rows_of_its_targets(tiny_config):
    model, _ = build("gpt", tiny_config(activation="swiglu"))
    add_lora(model, LoRAConfig(rank=2, targets=("gate",)))
    randomize_adapters(model)
    fused = model.decoder.blocks[0].feedforward.gate_and_up
    d_ff = tiny_config().d_ff
    delta = fused.delta_weight()  # (2·d_ff, d)
    assert delta[:d_ff].abs().sum() > 0
    assert torch.equal(delta[d_ff:], torch.zeros_like(delta[d_ff:]))


def test_adapter_state_dict_round_trip_and_mismatch(tiny_config):
    model, run = build("seq2seq", tiny_config())
    add_lora(model, LoRAConfig(rank=4))
    randomize_adapters(model)
    state = lora_state_dict(model)
    assert len(state) == 2 * (2 * 2 + 2 * 2 * 2)  # A and B; 4 enc + 8 dec layers
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in lora_parameters(other):
            parameter.zero_()
    load_lora_state_dict(other, state)
    assert torch.equal(run(other.eval()), run(model.eval()))
    wider, _ = build("seq2seq", tiny_config())
    add_lora(wider, LoRAConfig(rank=8))
    with pytest.raises(ValueError, match="has shape"):
        load_lora_state_dict(wider, state)
    more, _ = build("seq2seq", tiny_config())
    add_lora(more, LoRAConfig(rank=4, targets=("q", "k", "v")))
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(more, state)


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        ("seq2seq", {"targets": ["q", "query"]}, "give distinct names among"),
        ("seq2seq", {"rank": 0}, "rank=0 must be >= 1"),
        ("seq2seq", {"rnak": 4}, "unknown LoRA config key 'rnak' .did you mean 'rank'"),
        ("seq2seq", {"targets": ["gate"]}, "'gate' exists only with"),
        ("gpt", {"where": "encoder"}, "this GPT has no encoder"),
        ("seq2seq", {"where": "middle"}, "where='middle' is not one of"),
    ],
)
def test_bad_settings_fail_naming_the_problem(tiny_config, kind, values, message):
    model, _ = build(kind, tiny_config())
    with pytest.raises(ValueError, match=message):
        add_lora(model, LoRAConfig.from_dict(values))


def test_adapting_twice_is_refused(tiny_config):
    model, _ = build("gpt", tiny_config())
    add_lora(model, LoRAConfig())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, LoRAConfig(targets=("k",)))


@pytest.mark.parametrize("q_latent_dim", [None, 8], ids=["mla", "mla-compressed-q"])
def test_lora_on_latent_attention_adapts_it_and_its_absorbed_decoding(
    tiny_config, q_latent_dim
):
    config = tiny_config(
        attention="latent",
        kv_latent_dim=16,
        q_latent_dim=q_latent_dim,
        positions="rope",
    )
    model = GPT(config).eval()
    tokens = torch.randint(3, config.vocab_size, (2, 9))
    before = model(tokens)
    names = add_lora(model, LoRAConfig(rank=2, targets=("q", "k", "v", "o")))
    expected_q = "query.up" if q_latent_dim else "query"
    assert sum(name.endswith(f"self_attention.{expected_q}") for name in names) == 2
    assert sum(name.endswith("self_attention.key_up") for name in names) == 2
    assert torch.equal(model(tokens), before)
    randomize_adapters(model)
    adapted = model(tokens)
    assert not torch.allclose(adapted, before)
    # One token at a time, MLA multiplies by key_up and value_up itself (absorbed):
    # the unmerged adapters must count there too.
    cache = model.new_cache()
    with torch.no_grad():
        stepped = torch.cat(
            [model.step(tokens[:, i : i + 1], cache) for i in range(9)], 1
        )
    torch.testing.assert_close(stepped, adapted, atol=1e-4, rtol=1e-4)
    merge_lora(model)
    torch.testing.assert_close(model(tokens), adapted, atol=1e-5, rtol=1e-5)
