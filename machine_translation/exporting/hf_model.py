"""Our translation model as a Hugging Face ``transformers`` model: Pegasus.

Which architecture: ``transformers``' Pegasus is the pre-norm Transformer of the
original paper, as ours is by default: a LayerNorm before each sublayer and a final
one after each stack, sinusoidal positions counted from 0 with the frequencies
``10000^(-2i/d)``, embeddings scaled by √d, a ReLU or GeLU feed-forward layer,
biases, one embedding matrix shared by the encoder, the decoder and the LM head.
M2M100 (which the benchmarks used before) differs in its positions (fairseq's
frequencies, offset by the padding id, recomputed at load time rather than saved),
so ``from_pretrained`` could not give our model back; Marian is post-norm, and
CTranslate2 starts Marian's decoder from a zero vector, not from ``<s>``.

One difference is left, and a permutation removes it: Pegasus lays its sinusoids
out as ``[sin..., cos...]`` where ours interleave ``(sin, cos)`` pairs, the same
features in another order. A Transformer computes the same function when every
vector of its residual stream has its ``d`` channels reordered alike (LayerNorm and
attention are indifferent to the order), so the export reorders them: the
embedding's columns, each LayerNorm's gain and bias, the input columns of the
layers that read the stream (queries, keys, values, the first feed-forward layer)
and the output rows of those that write it (attention outputs, the second
feed-forward layer). Pegasus's own position table is then ours, to float rounding,
whether ``transformers`` loads the saved table or recomputes it.

Architecture options Pegasus cannot express fail with one line naming them
(:func:`check_exportable`).

Shapes: ``v`` vocabulary, ``d`` d_model, ``d_ff`` feed-forward width.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    PegasusConfig,
    PegasusForConditionalGeneration,
)

from encoder_transformer.config import TransformerConfig
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.exporting.hf_tokenizer import to_transformers_tokenizer
from machine_translation.model import Seq2SeqTransformer

# Our parameter names → Pegasus's, applied in order to each name.
RENAMES = [
    ("encoder.blocks.", "model.encoder.layers."),
    ("decoder.blocks.", "model.decoder.layers."),
    ("encoder.final_norm.", "model.encoder.layer_norm."),
    ("decoder.final_norm.", "model.decoder.layer_norm."),
    ("self_attention_norm.", "self_attn_layer_norm."),
    ("cross_attention_norm.", "encoder_attn_layer_norm."),
    ("feedforward_norm.", "final_layer_norm."),
    ("self_attention.", "self_attn."),
    ("cross_attention.", "encoder_attn."),
    ("attn.query.", "attn.q_proj."),
    ("attn.key.", "attn.k_proj."),
    ("attn.value.", "attn.v_proj."),
    ("attn.output.", "attn.out_proj."),
    ("feedforward.expand.", "fc1."),
    ("feedforward.contract.", "fc2."),
]
READS_STREAM = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "fc1.weight")
WRITES_STREAM = ("out_proj.", "fc2.")


class ExportError(ValueError):
    """The model cannot be exported (an architecture option, a bad output path)."""


def check_exportable(config: TransformerConfig) -> None:
    """Raises :class:`ExportError`, one line naming every option Pegasus lacks.

    >>> check_exportable(TransformerConfig(positions="rope", norm="rmsnorm"))
    Traceback (most recent call last):
    ...
    machine_translation.exporting.hf_model.ExportError: cannot export: positions='rope', norm='rmsnorm' have no counterpart in transformers' Pegasus or CTranslate2 (they need ...)
    """  # noqa: E501
    unsupported = []
    if config.attention != "standard":
        unsupported.append(f"attention={config.attention!r} (MLA)")
    if config.n_kv_heads != config.n_heads:
        unsupported.append(f"n_kv_heads={config.n_kv_heads} (GQA/MQA)")
    if config.positions != "sinusoidal":
        unsupported.append(f"positions={config.positions!r}")
    if config.activation not in ("relu", "gelu"):
        unsupported.append(f"activation={config.activation!r}")
    if config.norm != "layernorm":
        unsupported.append(f"norm={config.norm!r}")
    if config.norm_placement != "pre":
        unsupported.append(f"norm_placement={config.norm_placement!r}")
    if config.norm_eps != 1e-5:
        unsupported.append(f"norm_eps={config.norm_eps}")
    if not config.bias:
        unsupported.append("bias=False")
    if not config.share_embeddings:
        unsupported.append("share_embeddings=False")
    if config.d_model % 2:
        unsupported.append(f"d_model={config.d_model} (odd)")
    if unsupported:
        verb = "has" if len(unsupported) == 1 else "have"
        raise ExportError(
            f"cannot export: {', '.join(unsupported)} {verb} no counterpart in "
            "transformers' Pegasus or CTranslate2 (they need standard multi-head "
            "attention, sinusoidal positions, pre-norm LayerNorm with eps 1e-5 and "
            "biases, a ReLU or GeLU feed-forward layer, one shared vocabulary)"
        )


def channel_order(d_model: int) -> Tensor:
    """Pegasus's channel ``j`` is our channel ``order[j]``: sines first, then cosines.

    >>> channel_order(6)
    tensor([0, 2, 4, 1, 3, 5])
    """
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def bart_family_fields(config: TransformerConfig) -> dict:
    """Our sizes and dropouts under the names of transformers' BART family (BART,
    Marian, Pegasus, M2M100 configs share them)."""
    return {
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "encoder_attention_heads": config.n_heads,
        "decoder_attention_heads": config.n_heads,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_ff,
        "activation_function": config.activation,
        "dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "max_position_embeddings": config.max_positions,
        "scale_embedding": config.scale_embeddings,
        "pad_token_id": config.pad_id,
    }


def pegasus_config(config: TransformerConfig) -> PegasusConfig:
    """The Pegasus configuration of our architecture (checked exportable first)."""
    return PegasusConfig(
        **bart_family_fields(config),
        bos_token_id=BPETokenizer.bos_id,
        eos_token_id=BPETokenizer.eos_id,
        # Our decoder starts from <s> (Pegasus's usual start is <pad>) and nothing
        # forces an EOS at the length limit.
        decoder_start_token_id=BPETokenizer.bos_id,
        forced_eos_token_id=None,
        tie_word_embeddings=True,
        # Read by CTranslate2's converter (the BART family's names); transformers'
        # Pegasus is pre-norm without an embedding LayerNorm either way.
        normalize_before=True,
        normalize_embedding=False,
    )


def pegasus_name(name: str) -> str:
    """``decoder.blocks.0.cross_attention.query.weight`` →
    ``model.decoder.layers.0.encoder_attn.q_proj.weight``.

    >>> pegasus_name("encoder.blocks.2.feedforward.expand.bias")
    'model.encoder.layers.2.fc1.bias'
    """
    for ours, theirs in RENAMES:
        name = name.replace(ours, theirs)
    return name


def pegasus_weights(model: Seq2SeqTransformer) -> dict[str, Tensor]:
    """Our weights under Pegasus's names, with the channels of the residual stream
    in Pegasus's order (float32, new tensors; ``model`` is left as it is)."""
    config = model.config
    order = channel_order(config.d_model)
    weights = {}
    for name, tensor in model.state_dict().items():
        if ".embedding." in name:
            continue  # the shared table, below
        tensor = tensor.detach().float()
        theirs = pegasus_name(name)
        if "norm." in name:  # (d,) gain or bias of a LayerNorm
            tensor = tensor[order]
        elif theirs.endswith(READS_STREAM):  # (out, d): permute the inputs
            tensor = tensor[:, order]
        elif any(part in theirs for part in WRITES_STREAM):  # (d, in) or (d,)
            tensor = tensor[order]
        weights[theirs] = tensor.clone()
    embedding = model.encoder.embedding.tokens.weight.detach().float()[:, order]
    for name in ("model.shared.weight", "lm_head.weight"):
        weights[name] = embedding.clone()
    for stack in ("encoder", "decoder"):
        weights[f"model.{stack}.embed_tokens.weight"] = weights["model.shared.weight"]
        table = getattr(model, stack).embedding.positions.table.float()[:, order]
        weights[f"model.{stack}.embed_positions.weight"] = table.clone()
    weights["final_logits_bias"] = torch.zeros(1, config.vocab_size)
    return weights


def to_transformers(model: Seq2SeqTransformer) -> PegasusForConditionalGeneration:
    """A ``PegasusForConditionalGeneration`` (float32, eval mode) computing ``model``,
    whose ``generate`` defaults to our greedy search.

    Raises:
        ExportError: ``model`` uses an option Pegasus cannot express.
    """
    check_exportable(model.config)
    config = pegasus_config(model.config)
    exported = PegasusForConditionalGeneration(config)
    exported.load_state_dict(pegasus_weights(model), strict=True)
    generation = GenerationConfig.from_model_config(config)  # the special ids
    generation.num_beams, generation.do_sample = 1, False
    # Our searches never choose <pad> or <s>.
    generation.suppress_tokens = [config.pad_token_id, config.bos_token_id]
    # (<s> takes the first position. max_length would clash with a caller's
    # max_new_tokens, the usual argument.)
    generation.max_new_tokens = model.config.max_positions - 1
    exported.generation_config = generation
    return exported.eval()


def save_transformers(
    model: Seq2SeqTransformer, tokenizer: BPETokenizer, directory: str | Path
) -> Path:
    """Writes the directory ``from_pretrained`` loads: ``config.json``,
    ``generation_config.json``, ``model.safetensors`` and the tokenizer.

    Raises:
        ExportError: ``model`` uses an option Pegasus cannot express.
    """
    exported = to_transformers(model)
    directory = Path(directory)
    exported.save_pretrained(directory)  # safetensors, the shared matrix once
    to_transformers_tokenizer(tokenizer, model.config.max_positions).save_pretrained(
        directory
    )
    return directory
