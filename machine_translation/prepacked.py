"""Linear layers with weights prepacked for oneDNN: faster bf16 decoding on a CPU.

On a CPU, a bf16 matrix product goes through oneDNN, which wants the weight matrix
in its own blocked layout. ``F.linear`` converts the weight into that layout at
every call; while training, with hundreds of rows per product, that is cheap next to
the product itself, but a decoding step multiplies only a few rows (one per
sentence being translated), so the conversion can cost as much as the product. A
prepacked layer converts its weight once, when inference starts, and reuses it.

Measured on this project's CPU (2 threads, AVX-512 BF16; ``bench/README.md``): the
8,000-way output layer at 64 rows takes 0.8 instead of 1.8 ms per step, and greedy
search at batch 64 runs about 1.1–1.3× as fast. Results are the same products (the
same oneDNN kernels, with the weight converted ahead of time).

Self-attention's query, key and value layers read the same states; inference gives
them one packed layer of the stacked weights, so that a decoding step makes one call
instead of three (each call has a fixed cost of tens of microseconds, more than the
arithmetic of a few rows).

Only bf16 weights on a CPU with oneDNN's bf16 support are packed; anything else is
left as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from decoder_transformer.decoder import TransformerDecoder
from encoder_transformer.attention import MultiHeadAttention


def can_prepack(weight: Tensor) -> bool:
    """Whether ``weight`` can be prepacked here: bf16, on a CPU with oneDNN bf16."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class PrepackedLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` converted once into oneDNN's layout (inference).

    ``weight`` and ``bias`` stay the layer's parameters, the very same objects (code
    that reads ``layer.weight``, or a tied weight shared with an embedding, sees no
    difference), but the product uses the packed copy, so they must not change
    afterwards.

    Args:
        weight: ``(d_out, d_in)`` bf16 parameter (or tensor), on the CPU.
        bias: ``(d_out,)`` parameter (or tensor), or None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        # An opaque tensor in oneDNN's blocked layout (not a parameter: not saved).
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(
            weight.detach(), None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PrepackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        """``(..., d_in)`` → ``(..., d_out)``."""
        return torch.ops.mkldnn._linear_pointwise(
            inputs, self.packed_weight, self.bias, "none", [], ""
        )

    def extra_repr(self) -> str:
        d_out, d_in = self.weight.shape
        return f"in_features={d_in}, out_features={d_out}, bias={self.bias is not None}"


def fuse_self_attention_projections(attention: MultiHeadAttention) -> None:
    """Gives self-attention one packed layer for its queries, keys and values.

    A decoding step projects one token per sentence; three products of a few rows
    cost three calls' overhead for little arithmetic, one product of the stacked
    weights ``(d_q + 2·d_kv, d)`` costs one. The stacked copy is extra memory
    (``3·d²`` values per layer for MHA); the separate layers stay as they are.
    """
    layers = (attention.query, attention.key, attention.value)
    if not all(isinstance(layer, PrepackedLinear) for layer in layers):
        return
    weight = torch.cat([layer.weight.detach() for layer in layers])
    biases = [layer.bias for layer in layers]
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    attention.fused_projection = PrepackedLinear(weight, bias)


def prepack_linear_layers(model: nn.Module) -> nn.Module:
    """Replaces every bf16 ``nn.Linear`` of ``model`` (and a decoder's tied output
    layer) by a :class:`PrepackedLinear`, and gives self-attention one fused
    query/key/value layer, in place; for inference only.

    Layers that cannot be packed here (fp32 weights, no oneDNN bf16) are left
    alone, so calling this is always safe.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and can_prepack(child.weight):
                setattr(module, name, PrepackedLinear.from_linear(child))
        if isinstance(module, TransformerDecoder):
            tied = module.embedding.tokens.weight
            if can_prepack(tied):
                module.output_projection = PrepackedLinear(tied)
    for module in list(model.modules()):
        self_attention = getattr(module, "self_attention", None)
        if isinstance(self_attention, MultiHeadAttention):
            fuse_self_attention_projections(self_attention)
    return model
