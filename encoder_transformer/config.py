"""Every architecture option of the toolkit, in one typed, frozen dataclass.

The encoder, the decoder, the decoder-only GPT and the encoder-decoder model are all
built from a :class:`TransformerConfig`. Defaults live here and nowhere else; an
impossible combination fails at construction with a ``ValueError`` that names the
offending value, long before a tensor shape error could.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Norm = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
Positions = Literal["sinusoidal", "learned", "rope", "none"]
Activation = Literal["relu", "gelu", "swiglu"]
Attention = Literal["standard", "latent"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "norm": ("layernorm", "rmsnorm"),
    "norm_placement": ("pre", "post"),
    "positions": ("sinusoidal", "learned", "rope", "none"),
    "activation": ("relu", "gelu", "swiglu"),
    "attention": ("standard", "latent"),
}


def _runtime_type(hint: Any) -> type:
    """The class a field's value must be: ``Literal[...]`` → str, ``X | None`` → X."""
    if typing.get_origin(hint) is Literal:
        return str
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def reject_unknown_keys(values: Mapping[str, Any], schema: type, what: str) -> None:
    """Raises a ``ValueError`` naming the first key that is not a field of ``schema``.

    A typo in a YAML file would otherwise fall back to the default silently.
    """
    names = [field.name for field in dataclasses.fields(schema)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {what} key {key!r}{hint}")


@dataclass(frozen=True)
class TransformerConfig:
    """The architecture of an encoder, a decoder, a GPT or an encoder-decoder model.

    The defaults are the original Transformer's choices at a small size: post-norm was
    the original placement, but pre-norm trains more stably without careful warm-up, so
    it is the default here.

    Attributes:
        vocab_size: Target vocabulary (and the joint vocabulary when
            ``share_embeddings``); the size of the LM head.
        source_vocab_size: Source vocabulary when the encoder has its own embedding;
            ``None`` means the same as ``vocab_size``.
        share_embeddings: One embedding matrix for the encoder, the decoder and the LM
            head (three-way tying, for a joint vocabulary). When False the encoder has
            its own source embedding; the decoder's embedding is always tied to the LM
            head.
        d_model: Width of every hidden state.
        n_heads: Query heads of every attention layer.
        n_kv_heads: Key/value heads: ``n_heads`` is multi-head attention (MHA), a
            divisor of ``n_heads`` grouped-query attention (GQA), 1 multi-query
            attention (MQA). ``None`` means ``n_heads``. With ``attention="latent"``
            it applies to cross-attention only.
        attention: Self-attention kind: ``standard`` (MHA/GQA/MQA by ``n_kv_heads``)
            or ``latent`` (multi-head latent attention, MLA, as in DeepSeek-V2: keys
            and values are up-projected from a small cached latent). Cross-attention
            is always standard.
        kv_latent_dim: MLA only: width of the key/value latent, the vector cached per
            token and layer. ``None`` means ``4 * head_dim`` (DeepSeek-V2's ratio).
        q_latent_dim: MLA only: width of the query latent (query compression);
            ``None`` means queries are projected directly from the hidden states.
        rope_head_dim: MLA with ``positions="rope"`` only: width of the decoupled
            rotary part of each query head and of the one rotary key shared by all
            heads (even). ``None`` means ``head_dim // 2`` rounded down to an even
            number, at least 2.
        d_ff: Hidden width of the feed-forward network.
        encoder_layers: Encoder blocks (unused by the decoder-only GPT).
        decoder_layers: Decoder blocks (also the GPT's blocks).
        dropout: Dropout on embeddings, after attention and feed-forward outputs, and
            inside the feed-forward network.
        attention_dropout: Dropout on the attention weights.
        activation_dropout: Dropout on the feed-forward hidden layer (after the
            activation); ``None`` means ``dropout``. fairseq uses 0 here: on a CPU the
            random masks of this 4x-wide layer cost ~20% of a training step.
        activation: Feed-forward non-linearity: ``relu``, ``gelu`` or ``swiglu``.
        norm: ``layernorm`` or ``rmsnorm``.
        norm_placement: ``pre`` (normalize the sublayer's input, plus a final norm) or
            ``post`` (normalize after the residual sum, as in the original paper).
        norm_eps: Epsilon of every normalization layer.
        positions: ``sinusoidal`` (fixed, added), ``learned`` (a table, added),
            ``rope`` (rotary, applied to queries and keys) or ``none``.
        max_positions: Longest sequence the position encoding supports.
        rope_base: Base of the rotary frequencies.
        bias: Biases in the linear layers and LayerNorm.
        scale_embeddings: Multiply token embeddings by √d_model, as the original
            Transformer does, so that they are not drowned by the position encoding.
        pad_id: Token id of padding; its embedding row starts at zero.
    """

    vocab_size: int = 8000
    source_vocab_size: int | None = None
    share_embeddings: bool = True
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None
    attention: Attention = "standard"
    kv_latent_dim: int | None = None
    q_latent_dim: int | None = None
    rope_head_dim: int | None = None
    d_ff: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float | None = None
    activation: Activation = "relu"
    norm: Norm = "layernorm"
    norm_placement: NormPlacement = "pre"
    norm_eps: float = 1e-5
    positions: Positions = "sinusoidal"
    max_positions: int = 512
    rope_base: float = 10000.0
    bias: bool = True
    scale_embeddings: bool = True
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            # Frozen dataclass: resolve the default once, so the stored config is
            # explicit (and round-trips through asdict).
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.source_vocab_size is None:
            object.__setattr__(self, "source_vocab_size", self.vocab_size)
        if self.activation_dropout is None:
            object.__setattr__(self, "activation_dropout", self.dropout)
        self._check_types()
        self._check_values()
        # After the head checks above: the MLA defaults are multiples of head_dim.
        self._resolve_latent_defaults()
        self._check_latent_values()

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and type(None) in typing.get_args(hints[field.name]):
                continue  # an optional size left unset (MLA's, for standard attention)
            expected = _runtime_type(hints[field.name])
            # bool is a subclass of int: `d_model: true` in YAML must not pass.
            ok = isinstance(value, expected) and not (
                expected is not bool and isinstance(value, bool)
            )
            if (
                expected is float
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                object.__setattr__(self, field.name, float(value))
                ok = True
            if not ok:
                raise ValueError(
                    f"{field.name}={value!r} must be of type {expected.__name__}"
                )

    def _check_values(self) -> None:
        for name in (
            "vocab_size",
            "source_vocab_size",
            "d_model",
            "n_heads",
            "n_kv_heads",
            "d_ff",
            "encoder_layers",
            "decoder_layers",
            "max_positions",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not one of {choices}"
                )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by "
                f"n_kv_heads={self.n_kv_heads}"
            )
        # MLA rotates only its rope_head_dim part (checked below), not the heads.
        standard_rope = self.positions == "rope" and self.attention == "standard"
        if standard_rope and self.head_dim % 2:
            raise ValueError(
                f"positions='rope' needs an even head_dim, got "
                f"d_model/n_heads={self.head_dim}"
            )
        if self.norm_eps <= 0 or self.rope_base <= 1:
            raise ValueError(
                f"norm_eps={self.norm_eps} must be > 0 and rope_base={self.rope_base}"
                " must be > 1"
            )
        if self.share_embeddings and self.source_vocab_size != self.vocab_size:
            raise ValueError(
                f"share_embeddings=True needs one joint vocabulary, but "
                f"source_vocab_size={self.source_vocab_size} != "
                f"vocab_size={self.vocab_size}"
            )
        smallest_vocab = min(self.vocab_size, self.source_vocab_size)
        if not 0 <= self.pad_id < smallest_vocab:
            raise ValueError(
                f"pad_id={self.pad_id} is outside the vocabulary "
                f"(size {smallest_vocab})"
            )

    def _resolve_latent_defaults(self) -> None:
        """Fills MLA's ``None`` sizes; a standard-attention config keeps its Nones."""
        if self.attention != "latent":
            return
        if self.kv_latent_dim is None:
            object.__setattr__(self, "kv_latent_dim", 4 * self.head_dim)
        if self.rope_head_dim is None and self.positions == "rope":
            object.__setattr__(self, "rope_head_dim", 2 * max(1, self.head_dim // 4))

    def _check_latent_values(self) -> None:
        for name in ("kv_latent_dim", "q_latent_dim", "rope_head_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be at least 1, or null")
        uses_rope_part = self.attention == "latent" and self.positions == "rope"
        if uses_rope_part and self.rope_head_dim % 2:
            raise ValueError(
                f"rope_head_dim={self.rope_head_dim} must be even: RoPE rotates "
                "pairs of channels"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TransformerConfig:
        """Builds a config from a plain mapping (a YAML file, a checkpoint).

        Raises:
            ValueError: naming the first key that is not a field, or a bad value.

        >>> TransformerConfig.from_dict({"d_model": 64, "n_heads": 2}).head_dim
        32
        >>> TransformerConfig.from_dict({"d_modle": 64})
        Traceback (most recent call last):
        ...
        ValueError: unknown model config key 'd_modle' (did you mean 'd_model'?)
        """
        reject_unknown_keys(values, cls, "model config")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict of Python scalars (for YAML and checkpoints)."""
        return dataclasses.asdict(self)
