"""LoRA on a whole model: which layers get adapters, and adding, saving, merging them.

LoRA (Hu et al. 2021) freezes a trained model and learns, for a few chosen weights
``W``, a low-rank change ``(α / r) · B A``; the adapted layer and the reasons for its
design are in ``encoder_transformer.lora_linear`` (:class:`LoRALinear`). This module
works on a whole model: :class:`LoRAConfig` says which projections to adapt and how,
:func:`add_lora` wraps them, :func:`lora_state_dict` and :func:`load_lora_state_dict`
save and load the adapters alone, and :func:`merge_lora` folds them back into plain
``nn.Linear`` layers. The target names (``q``, ``v``, ``gate``, ...) and the layers
they stand for are listed in ``encoder_transformer.lora_targets``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from encoder_transformer.config import reject_unknown_keys
from encoder_transformer.lora_linear import LoRALinear
from encoder_transformer.lora_targets import PLACES, TARGETS, projections_of, regions


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
    for prefix, region in regions(model, config.where):
        for name, module in region.named_modules():
            table = projections_of(module)
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
