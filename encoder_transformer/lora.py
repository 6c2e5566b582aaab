"""LoRA: fine-tuning a trained model through a few small low-rank matrices.

Fine-tuning every weight for a new domain costs a full copy of the model per domain,
plus optimizer state twice its size. LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models") freezes each chosen weight ``W`` ``(d_out, d_in)`` and
learns only its *change*, as the product of two thin matrices::

    W' = W + (α / r) · B A        A: (r, d_in),  B: (d_out, r),  r ≪ d_in, d_out

- **Why low rank.** The change that adapts a trained model to a related task has a
  low "intrinsic rank" (Aghajanyan et al. 2020; Hu et al. measured it on GPT-3): a
  rank of 4-16 recovers most of full fine-tuning. ``r = 8`` on a 256×256 projection
  trains 4,096 numbers instead of 65,536, and the optimizer keeps state for those only.
- **Why B starts at zero.** ``A`` starts random (as ``nn.Linear`` initializes a
  weight) and ``B`` at zero, so ``B A = 0``: at step 0 the adapted model computes
  exactly what the base model computes. Training then starts from the trained model,
  not from a randomly perturbed one. The gradient still flows: ``∂L/∂B`` involves
  ``A x``, which is not zero (were both zero, neither would ever move).
- **Why α / r.** The update ``B A x`` grows with ``r`` at initialization; dividing
  by ``r`` keeps its size comparable across ranks, so a learning rate tuned for one
  rank suits another. ``α`` (often ``2r``) sets the overall strength.
- **Why merging costs nothing at inference.** After training, ``W + (α/r) B A`` is
  just another ``(d_out, d_in)`` matrix: :func:`merge_lora` folds it into the base
  weight and the model is a plain model again, with the base's shapes, FLOPs and
  speed. One base model serves many domains, each a small adapter file merged at load.

Targets name the projections to adapt, wherever they are (self- and
cross-attention, encoder and decoder):

=========  ===============================================================
``q k v``  the attention's query, key and value projections
``o``      the attention's output projection
``up``     the FFN's first layer (``FeedForward.expand``; SwiGLU's ``W_up``)
``down``   the FFN's second layer (``FeedForward.contract``; ``SwiGLU.down``)
``gate``   SwiGLU's ``W_gate`` (SwiGLU models only)
=========  ===============================================================

SwiGLU computes ``x W_gate`` and ``x W_up`` with one fused ``nn.Linear``
(``gate_and_up``, 2·d_ff outputs). Each of the two gets its own ``(A, B)`` pair on its
own output rows (an *output slice*), so ``gate`` and ``up`` are chosen independently
and each has rank ``r``, exactly as if the two matrices were separate layers.

Shapes: ``d_in``/``d_out`` a layer's input/output width, ``r`` the rank, ``n`` the
number of output slices of one adapted layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoder_transformer.attention import MultiHeadAttention
from encoder_transformer.config import reject_unknown_keys
from encoder_transformer.dropout import Dropout
from encoder_transformer.feedforward import FeedForward, SwiGLU
from encoder_transformer.latent_attention import MultiHeadLatentAttention

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
PLACES = ("encoder", "decoder", "both")


class Projection(NamedTuple):
    """Where a target lives in a module: the ``nn.Linear`` attribute holding it and,
    for a fused layer, which of its ``parts`` equal output blocks is the target."""

    attribute: str
    part: int = 0
    parts: int = 1


# Which layer each target is, per module type. A new attention or FFN module makes
# itself adaptable with one entry here.
PROJECTIONS: dict[type[nn.Module], dict[str, Projection]] = {
    MultiHeadAttention: {
        "q": Projection("query"),
        "k": Projection("key"),
        "v": Projection("value"),
        "o": Projection("output"),
    },
    # MLA: k and v are the up-projections from the latent (the rotary key, part of
    # kv_down, is not adapted); q is the query's up-projection when it is compressed.
    MultiHeadLatentAttention: {
        "q": Projection("query"),
        "k": Projection("key_up"),
        "v": Projection("value_up"),
        "o": Projection("output"),
    },
    FeedForward: {"up": Projection("expand"), "down": Projection("contract")},
    # gate_and_up: the first d_ff outputs are x W_gate, the last d_ff x W_up.
    SwiGLU: {
        "gate": Projection("gate_and_up", 0, 2),
        "up": Projection("gate_and_up", 1, 2),
        "down": Projection("down"),
    },
}


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get adapters, and their size.

    Attributes:
        rank: ``r``, the inner width of each adapter.
        alpha: The update is scaled by ``alpha / rank``.
        dropout: Dropout on the adapter's input (the base path has none added).
        targets: Projections to adapt, among :data:`TARGETS`; Hu et al. found
            query and value enough, hence the default.
        where: ``encoder``, ``decoder`` (the model's submodule of that name) or
            ``both`` (the whole model).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    where: str = "both"

    def __post_init__(self) -> None:
        # Accept a list (YAML, checkpoints) and store the tuple.
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise ValueError(f"LoRA rank={self.rank!r} must be an integer")
        if self.rank < 1 or not self.alpha > 0:
            raise ValueError(
                f"LoRA rank={self.rank} must be >= 1 and alpha={self.alpha} > 0"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout={self.dropout} must be in [0, 1)")
        unknown = [target for target in self.targets if target not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) < len(self.targets):
            raise ValueError(
                f"LoRA targets={list(self.targets)}: give distinct names among "
                f"{', '.join(TARGETS)}"
            )
        if self.where not in PLACES:
            raise ValueError(f"LoRA where={self.where!r} is not one of {PLACES}")

    @property
    def scale(self) -> float:
        """``alpha / rank``, the factor on every update."""
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoRAConfig:
        """Builds a config from a plain mapping (a YAML node, a checkpoint).

        Raises:
            ValueError: naming an unknown key (``rnak``: did you mean ``rank``?) or
                a bad value.

        >>> LoRAConfig.from_dict({"rank": 4, "targets": ["q", "k"]}).scale
        4.0
        """
        reject_unknown_keys(values, cls, "LoRA config")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (``targets`` as a list) for YAML and checkpoints."""
        return {**dataclasses.asdict(self), "targets": list(self.targets)}


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update of some output rows.

    ``forward(x) = base(x) + (alpha / rank) · B A dropout(x)``, where output slice
    ``i`` (rows ``start_i:stop_i``) gets its own rank-``r`` pair: rows ``i·r:(i+1)·r``
    of ``A`` and its own block of rows of ``B``. Other output rows are unchanged.

    Args:
        base: The layer to adapt; its parameters are frozen here.
        rank: ``r``.
        alpha: Scale numerator.
        dropout: Dropout on the adapter's input.
        slices: ``(start, stop)`` output row ranges, each with its own adapter;
            None means one adapter over all rows.

    Parameters:
        ``lora_A`` ``(n·r, d_in)``, Kaiming-uniform like ``nn.Linear``'s weight;
        ``lora_B`` ``(rows, r)``, zeros, where ``rows`` is the slices' total length.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        slices: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.slices = tuple(slices or [(0, base.out_features)])
        if any(
            not 0 <= start < stop <= base.out_features for start, stop in self.slices
        ):
            raise ValueError(
                f"slices {self.slices} fall outside {base.out_features} output rows"
            )
        rows = sum(stop - start for start, stop in self.slices)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(
            torch.empty(len(self.slices) * rank, base.in_features, **factory)
        )
        self.lora_B = nn.Parameter(torch.zeros(rows, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = Dropout(dropout)  # the cheaper CPU mask of dropout.py

    def update_matrix(self) -> Tensor:
        """``B`` placed on the base's output rows: ``(d_out, n·r)``, zero elsewhere.

        With one slice over all rows (every layer but a partly adapted fused one)
        this is ``lora_B`` itself.
        """
        if self.slices == ((0, self.base.out_features),):
            return self.lora_B
        placed = self.lora_B.new_zeros(self.base.out_features, self.lora_A.size(0))
        row = 0
        for index, (start, stop) in enumerate(self.slices):
            columns = slice(index * self.rank, (index + 1) * self.rank)
            placed[start:stop, columns] = self.lora_B[row : row + stop - start]
            row += stop - start
        return placed

    def delta_weight(self) -> Tensor:
        """``(alpha / rank) · B A``, ``(d_out, d_in)``: what merging adds to W."""
        return self.scale * (self.update_matrix() @ self.lora_A)

    @property
    def weight(self) -> Tensor:
        """``W + (alpha / rank) · B A``, ``(d_out, d_in)``: the effective weight, for
        code that multiplies by a layer's matrix itself (MLA's absorbed decoding)."""
        return self.base.weight + self.delta_weight().to(self.base.weight.dtype)

    def forward(self, inputs: Tensor) -> Tensor:
        """``(..., d_in)`` → ``(..., d_out)``."""
        # Two thin products, (..., d_in) → (..., n·r) → (..., d_out), never the full
        # (d_out, d_in) update: r ≪ d keeps training cheap. The scale is applied
        # where the tensor is narrowest.
        low_rank = F.linear(self.dropout(inputs), self.lora_A) * self.scale
        return self.base(inputs) + F.linear(low_rank, self.update_matrix())

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes in eval mode.

        Its weight is ``W + (alpha / rank) · B A`` (summed in float32, stored in W's
        dtype); the bias is the base's. This module is left unchanged.
        """
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        weight = base.weight.float() + self.delta_weight().float()
        merged.weight.copy_(weight.to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, slices={list(self.slices)}"


def _regions(model: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    """The ``(name prefix, module)`` that ``where`` selects."""
    if where == "both":
        return [("", model)]
    part = getattr(model, where, None)
    if not isinstance(part, nn.Module):
        raise ValueError(
            f"LoRA where={where!r}: this {type(model).__name__} has no {where}; "
            "use where='both'"
        )
    return [(f"{where}.", part)]


def _projections(module: nn.Module) -> dict[str, Projection]:
    for kind, table in PROJECTIONS.items():
        if isinstance(module, kind):
            if isinstance(getattr(module, "query", None), nn.Sequential):
                return {**table, "q": Projection("query.up")}  # compressed queries
            return table
    return {}


def add_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wraps the chosen projections in :class:`LoRALinear`; freezes everything else.

    Works in place on any model of the toolkit (encoder, decoder, GPT, encoder-
    decoder): after it, only the adapters' ``lora_A``/``lora_B`` require gradients,
    and the model's outputs are unchanged (``B = 0``).

    Returns:
        The names of the adapted layers, e.g. ``encoder.blocks.0.self_attention.query``.

    Raises:
        ValueError: ``where`` names a part the model lacks, a target matches no
            layer there, or the model already has adapters.
    """
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        raise ValueError("the model already has LoRA adapters: merge them first")
    # Layer name -> (parent module, attribute, output slices): fused layers collect
    # one slice per target before being wrapped once.
    plan: dict[str, tuple[nn.Module, str, list[tuple[int, int]]]] = {}
    matched = set()
    for prefix, region in _regions(model, config.where):
        for name, module in region.named_modules():
            table = _projections(module)
            for target in config.targets:
                if target not in table:
                    continue
                projection = table[target]
                layer = module.get_submodule(projection.attribute)
                size = layer.out_features // projection.parts
                start = projection.part * size
                full_name = f"{prefix}{name}.{projection.attribute}".lstrip(".")
                owner, _, attribute = projection.attribute.rpartition(".")
                parent = module.get_submodule(owner) if owner else module
                entry = plan.setdefault(full_name, (parent, attribute, []))
                entry[2].append((start, start + size))
                matched.add(target)
    missing = [target for target in config.targets if target not in matched]
    if missing:
        raise ValueError(
            f"LoRA targets {missing} match no layer in the {config.where} of this "
            f"{type(model).__name__} ('gate' exists only with activation=swiglu)"
        )
    model.requires_grad_(False)
    for parent, attribute, slices in plan.values():
        base = getattr(parent, attribute)
        full = slices == [(0, base.out_features)]
        adapted = LoRALinear(
            base,
            config.rank,
            config.alpha,
            config.dropout,
            slices=None if full else sorted(slices),
        )
        setattr(parent, attribute, adapted)
    return list(plan)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every adapter matrix (``lora_A`` and ``lora_B``) of the model."""
    return [
        parameter
        for module in model.modules()
        if isinstance(module, LoRALinear)
        for parameter in (module.lora_A, module.lora_B)
    ]


def freeze_all_but_lora(model: nn.Module) -> None:
    """Only the adapters train: every other parameter stops requiring gradients."""
    model.requires_grad_(False)
    for parameter in lora_parameters(model):
        parameter.requires_grad_(True)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' weights alone, by their names in ``model.state_dict()``."""
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.endswith((".lora_A", ".lora_B"))
    }


def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copies adapter weights (from :func:`lora_state_dict`) into an adapted model.

    Raises:
        ValueError: the names or shapes differ from the model's adapters (another
            LoRA config, or another model).
    """
    current = lora_state_dict(model)
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        raise ValueError(
            "the adapter weights do not fit this model's adapters: "
            f"{len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    for name, tensor in state.items():
        if tensor.shape != current[name].shape:
            raise ValueError(
                f"adapter weight {name} has shape {tuple(tensor.shape)}; this model "
                f"expects {tuple(current[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            current[name].copy_(tensor)


def merge_lora(model: nn.Module) -> int:
    """Folds every adapter into its base weight, in place; returns how many.

    The model becomes a plain model again (no :class:`LoRALinear` left, every
    parameter trainable as after construction) that computes what the adapted model
    computes in eval mode, at the base model's speed.
    """
    adapted = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, LoRALinear)
    ]
    for name, module in adapted:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attribute, module.merge())
    model.requires_grad_(True)
    return len(adapted)
