"""Where each LoRA target is: the name a config gives → the layer it adapts.

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

:data:`PROJECTIONS` maps each module type to the layers its targets name;
:func:`projections_of` looks a module up in it, and :func:`regions` finds the part of
a model (encoder, decoder or both) where ``encoder_transformer.lora.add_lora`` looks.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from encoder_transformer.attention import MultiHeadAttention
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


def regions(model: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
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


def projections_of(module: nn.Module) -> dict[str, Projection]:
    """The targets ``module`` has, by name, and where each is; empty for none.

    >>> projections_of(FeedForward(8, 16, "relu", 0.0, True))["up"]
    Projection(attribute='expand', part=0, parts=1)
    """
    for kind, table in PROJECTIONS.items():
        if isinstance(module, kind):
            if isinstance(getattr(module, "query", None), nn.Sequential):
                return {**table, "q": Projection("query.up")}  # compressed queries
            return table
    return {}
