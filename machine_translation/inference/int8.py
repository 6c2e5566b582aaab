"""int8 decoding on the CPU: dynamically quantized linear layers (``--precision int8``).

Each ``nn.Linear`` weight is stored once as int8 with one scale per output row
(per-channel); at every call the input rows are quantized to uint8 with a scale of
their own (hence "dynamic": nothing is calibrated), multiplied in int8 with int32
sums (AVX-512 VNNI where the CPU has it), and the result returned in float32. The
weights take a quarter of the memory, and a decoding step, which reads every weight
for a few rows, reads a quarter of the bytes. Everything else (embeddings, LayerNorm,
attention's products over the cache, softmax) stays in float32.

The LM head is a linear layer too, the largest one (``v × d``), but ours is tied to
the embedding table, which the embedding still needs in float32; the int8 model
gets a quantized copy of it as a head of its own (:class:`Int8Seq2Seq`).

The kernels are PyTorch's supported x86 int8 path, ``torch.ao.quantization``'s
dynamic linear layers on the engine :data:`ENGINE` (chosen by measurement on this
project's CPU, ``bench/README.md``). PyTorch 2.13 announces that this API moves to
``torchao``; torchao's int8 on the CPU goes through ``torch.compile``, so the eager
path here stays until it is removed.

Shapes: ``b`` batch, ``s`` sequence, ``d`` d_model, ``v`` vocabulary.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from decoder_transformer.cache import DecoderCache
from machine_translation.model import Seq2SeqTransformer

# PyTorch's x86 engine (fbgemm's kernels for these layers). Measured on this
# project's CPU (AVX-512 VNNI; greedy, one thread, 3 rounds, medians, sentences/s
# at batch 1 / 64): x86 34.4 / 345, fbgemm 33.0 / 349, onednn 24.8 / 301; fp32
# 31.0 / 226; x86 with the LM head left in fp32, 29.3 / 287.
ENGINE = "x86"


def quantized_linears(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are int8 (``model`` unchanged)."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"precision='int8' needs PyTorch's {ENGINE} int8 kernels, which this "
            "build lacks: use fp32 or bf16"
        )
    torch.backends.quantized.engine = ENGINE  # the weights are packed for it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchao.*")  # (see above)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        # One scale per output row (as CTranslate2): rows of one matrix differ in
        # range, and a single scale would spend most rows' 8 bits on nothing.
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model),
            {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
        )


def int8_linear(weight: Tensor) -> DynamicInt8Linear:
    """An int8 linear layer without bias computing ``x @ weight.T``; ``(o, i)``."""
    layer = nn.Linear(weight.size(1), weight.size(0), bias=False)
    layer.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
    return quantized_linears(nn.Sequential(layer))[0]


class Int8Seq2Seq(nn.Module):
    """A translation model with int8 linear layers and an int8 LM head, for search.

    Built from a float model at load time (a new module; ``model`` is left as it
    is); it has what a search asks of a model (``config``, ``encode``,
    ``new_cache``, ``decode_step``; see ``inference.decoders.StepDecoder``).

    Args:
        model: The float32 translation model.
    """

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.config = model.config
        self.body = quantized_linears(model.eval())
        self.head = int8_linear(model.decoder.embedding.tokens.weight)
        self.requires_grad_(False)

    def encode(self, source_ids: Tensor, source_mask: Tensor | None = None) -> Tensor:
        """``(b, s_src)`` ids and mask → ``(b, s_src, d)`` encoder states."""
        return self.body.encode(source_ids, source_mask)

    def new_cache(self, capacity: int | None = None) -> DecoderCache:
        """An empty decoder cache (see ``Seq2SeqTransformer.new_cache``)."""
        return self.body.new_cache(capacity)

    def decode_step(
        self,
        target_ids: Tensor,
        encoder_hidden_states: Tensor,
        source_mask: Tensor | None,
        cache: DecoderCache,
    ) -> Tensor:
        """``(b, s_new)`` ids → ``(b, s_new, v)`` logits; extends ``cache``."""
        hidden_states = self.body.decoder.final_hidden_states(
            target_ids, None, encoder_hidden_states, source_mask, cache
        )
        return self.head(hidden_states)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights as held in memory: parameters and buffers (a
    shared tensor once) and int8 layers' packed weights (int8 values, float scales,
    biases)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):
            weight, bias = module._weight_bias()
            rows = weight.size(0) if weight.qscheme() == torch.per_channel_affine else 1
            total += weight.numel() + 8 * rows  # int8 values; a scale, a zero point
            if bias is not None:
                total += bias.numel() * bias.element_size()
    return total
