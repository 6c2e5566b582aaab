"""Our trained model as Hugging Face and CTranslate2 models, for speed references.

Decoding speed depends on the outputs' lengths, so the references get the very same
weights and should produce the same translations. Hugging Face's MarianMT is a
post-norm Transformer and cannot hold our pre-norm model; M2M100 (fairseq's
pre-norm Transformer: scaled embeddings, sinusoidal positions, a final LayerNorm in
encoder and decoder, ReLU FFN, tied embeddings, no bias on the LM head) has exactly
our architecture at d_model 256, 4 heads, FFN 1024, 3+3 layers. Two details differ
and are set by hand: fairseq's sinusoids are laid out [sin..., cos...] with a
slightly different frequency step, so our position table is copied into the
model's (M2M100 reads row ``pad_id + 1 + i`` for position ``i``), and CTranslate2's
converter, which understands M2M100, gets the same table. Greedy search then gives
the same tokens in all three (up to float rounding); beam search differs in its
length penalty (theirs divides by ``length ** α``, ours by GNMT's
``((5 + length) / 6) ** α``), so the benchmark reports each system's BLEU.

Needs ``pip install transformers ctranslate2`` (for the benchmark only: they are not
dependencies of the toolkit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when run directly

from machine_translation.model import Seq2SeqTransformer

# Our parameter names → M2M100's, applied in order to each name.
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
EMBEDDINGS = [
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
]


def hugging_face_name(name: str) -> str:
    """``decoder.blocks.0.cross_attention.query.weight`` →
    ``model.decoder.layers.0.encoder_attn.q_proj.weight``."""
    for ours, theirs in RENAMES:
        name = name.replace(ours, theirs)
    return name


def to_hugging_face(model: Seq2SeqTransformer):
    """An ``M2M100ForConditionalGeneration`` that computes what ``model`` does."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = model.config
    supported = (
        config.norm_placement == "pre"
        and config.norm == "layernorm"
        and config.positions == "sinusoidal"
        and config.activation == "relu"
        and config.share_embeddings
        and config.n_kv_heads == config.n_heads
        and config.bias
    )
    if not supported:
        raise ValueError("only pre-norm, sinusoidal, ReLU, MHA, shared-vocab models")
    reference = M2M100ForConditionalGeneration(
        M2M100Config(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            encoder_layers=config.encoder_layers,
            decoder_layers=config.decoder_layers,
            encoder_attention_heads=config.n_heads,
            decoder_attention_heads=config.n_heads,
            encoder_ffn_dim=config.d_ff,
            decoder_ffn_dim=config.d_ff,
            activation_function="relu",
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            scale_embedding=config.scale_embeddings,
            max_position_embeddings=config.max_positions,
            pad_token_id=config.pad_id,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            tie_word_embeddings=True,
        )
    )
    ours = model.float().state_dict()
    weights = {
        hugging_face_name(name): tensor
        for name, tensor in ours.items()
        if ".embedding." not in name
    }
    for name in EMBEDDINGS:
        weights[name] = ours["encoder.embedding.tokens.weight"]
    reference.load_state_dict(weights, strict=True)
    table = model.encoder.embedding.positions.table.float()
    for stack in (reference.model.encoder, reference.model.decoder):
        first = stack.embed_positions.padding_idx + 1
        stack.embed_positions.weights[first : first + len(table)] = table
    return reference.eval()


def to_ctranslate2(model: Seq2SeqTransformer, directory: str | Path) -> Path:
    """Writes ``model`` as a CTranslate2 model (float32) and returns its directory.

    Its vocabulary names token ``i`` ``"<i>"`` (specials aside): feed it token ids
    written that way, read its outputs back the same way (:func:`ids_to_ct2`,
    :func:`ct2_to_ids`).
    """
    from ctranslate2.converters.transformers import M2M100Loader

    reference = to_hugging_face(model)
    spec = M2M100Loader().get_model_spec(reference)
    spec.config.bos_token, spec.config.eos_token = "<s>", "</s>"
    spec.config.unk_token, spec.config.decoder_start_token = "<unk>", "<s>"
    tokens = ["<pad>", "<s>", "</s>", "<unk>"]
    tokens += [f"<{i}>" for i in range(len(tokens), model.config.vocab_size)]
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    table = model.encoder.embedding.positions.table.float()
    spec.encoder.position_encodings.encodings = table
    spec.decoder.position_encodings.encodings = table
    spec.validate()
    spec.optimize(quantization="float32")
    Path(directory).mkdir(parents=True, exist_ok=True)
    spec.save(str(directory))
    return Path(directory)


def ids_to_ct2(ids: list[int]) -> list[str]:
    """Token ids (≥ 4, no specials) as CTranslate2 tokens."""
    return [f"<{i}>" for i in ids]


def ct2_to_ids(tokens: list[str]) -> list[int]:
    """CTranslate2 output tokens back to ids (``<pad>``… map to their ids)."""
    specials = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    return [specials[t] if t in specials else int(t[1:-1]) for t in tokens]


def hugging_face_generate(
    reference, source_ids: torch.Tensor, source_mask: torch.Tensor, **settings
) -> list[list[int]]:
    """``generate`` on a padded batch; outputs without the start token and EOS."""
    outputs = reference.generate(
        input_ids=source_ids, attention_mask=source_mask.long(), **settings
    )
    results = []
    for row in outputs.tolist():
        row = row[1:]  # the decoder start token
        results.append(row[: row.index(2)] if 2 in row else [t for t in row if t])
    return results
