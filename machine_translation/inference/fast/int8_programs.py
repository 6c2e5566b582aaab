"""The compiled programs with int8 matrix products (``--compiled --precision int8``).

Eager int8 (``inference.int8``) makes the matrix products cheaper but leaves the
per-operation cost of a step, most of it at one sentence at a time; the compiled
programs remove that cost but multiply in bf16 or fp32. Here a program is exported
as for those (:func:`~machine_translation.inference.fast.programs.program_inputs`),
then quantized with torchao's PT2E flow for x86 and Inductor:

1. the exported graph is annotated by ``X86InductorQuantizer``: every linear
   layer's weight as int8 with one scale per output row, its input quantized
   dynamically (a scale computed from each call's own values, so nothing is
   calibrated), as the eager int8 layers do;
2. ``prepare_pt2e`` / ``convert_pt2e`` insert the quantize and dequantize
   operations around each product;
3. the graph is exported again, and Inductor (``freezing``), with the fusion
   passes that importing the quantizer registers, replaces each
   dequantize → linear pattern with oneDNN's int8 linear on prepacked int8
   weights (VNNI where the CPU has it).

The tied LM head is a linear layer of the graph like the others, so it is
quantized too; the embedding lookup reads the float table. Everything else
(attention over the cache, normalisation, softmax) stays fp32.

The few-rows later steps (one sentence at a time) are built another way: Inductor's
own kernels for dynamically quantized inputs abort the compiling process (torch
2.13, ``bench/README.md``), and at one row a step is bound by reading its weights,
not by multiplying. So there only the weights are int8 (one scale per output
row, the LM head an int8 copy of the tied matrix) and the inputs stay bf16,
unquantized: each linear layer becomes PyTorch's weight-only int8 product
(:class:`WeightOnlyInt8Linear`; torchao's own ``Int8WeightOnlyConfig`` layers
were compiled back to bf16 weights by Inductor's constant folding, torch 2.13).
Built on x86 CPUs with AVX2 or AVX-512 (``programs.programs``): the products
compute in fp32, so bf16 need not be native.
Needs torchao (``pip install -e '.[int8]'``).
"""

from __future__ import annotations

import copy
import importlib.util
import logging

import torch
from torch import Tensor, nn

from machine_translation.inference.fast.exported_modules import later_step
from machine_translation.inference.fast.programs import program_beams, program_inputs
from machine_translation.model import Seq2SeqTransformer


def has_torchao() -> bool:
    """Whether torchao, which quantizes the int8 programs, is installed."""
    return importlib.util.find_spec("torchao") is not None


def export_int8_program(
    model: Seq2SeqTransformer, program: str
) -> torch.export.ExportedProgram:
    """``program`` of the fp32 ``model`` with int8 linear layers, exported for the
    same sizes as :func:`~machine_translation.inference.fast.programs.export_program`
    (a few-rows step: :func:`export_weight_only_step`).
    """
    quiet_torchao_imports()
    if program.endswith("_few"):
        return export_weight_only_step(model, program)
    # Imported here: torchao is optional, and importing its x86 quantizer registers
    # the Inductor passes that turn the quantized patterns into int8 kernels.
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    module, example, dims = program_inputs(model, program)
    graph = torch.export.export(module, example, dynamic_shapes=dims).module()
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_dynamic=True)
    )
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example)  # observes the weights (inputs are quantized at each call)
    quantized = convert_pt2e(prepared)
    return torch.export.export(quantized, example, dynamic_shapes=dims)


def export_weight_only_step(
    model: Seq2SeqTransformer, program: str
) -> torch.export.ExportedProgram:
    """The few-rows later step ``program`` of the fp32 ``model`` (``model``
    unchanged), with int8 weights and bf16 inputs, exported as
    :func:`~machine_translation.inference.fast.programs.export_program` would."""
    weights = copy.deepcopy(model).to(torch.bfloat16)
    inputs = program_inputs(weights, program)
    layers = [
        (parent, name, child)
        for parent in weights.decoder.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in layers:
        setattr(parent, name, WeightOnlyInt8Linear(child.weight, child.bias))
    head = WeightOnlyInt8Linear(weights.decoder.embedding.tokens.weight)  # tied
    step = later_step(weights, program_beams(program), head)
    return torch.export.export(step, inputs.example, dynamic_shapes=inputs.dims)


class WeightOnlyInt8Linear(nn.Module):
    """``x @ weight.T + bias`` with ``weight`` held as int8, one scale per output
    row, for bf16 inputs ``(..., i)`` → ``(..., o)``: PyTorch's weight-only int8
    product (``aten._weight_int8pack_mm``), which Inductor compiles as it is or as
    its own C++ kernel. The scales are chosen by torchao (symmetric, per row).

    Args:
        weight: ``(o, i)``, any float type.
        bias: ``(o,)`` or None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        from torchao.quantization import Int8Tensor
        from torchao.quantization.granularity import PerRow

        quantized = Int8Tensor.from_hp(weight.detach().float(), granularity=PerRow())
        self.register_buffer("weight", quantized.qdata)  # (o, i) int8
        self.register_buffer("scales", quantized.scale.reshape(-1).to(torch.bfloat16))
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.bfloat16)
        )

    def forward(self, inputs: Tensor) -> Tensor:
        rows = inputs.reshape(-1, inputs.size(-1))
        outputs = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        outputs = outputs.view(*inputs.shape[:-1], outputs.size(-1))
        return outputs if self.bias is None else outputs + self.bias


def quiet_torchao_imports() -> None:
    """torchao's import notes (GPU kernels it skips, pytree registrations) are not
    a user's to act on: only its errors are shown."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
