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
(attention over the cache, normalisation, softmax) stays fp32. Needs torchao
(``pip install -e '.[int8]'``).
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from machine_translation.inference.fast.programs import program_inputs
from machine_translation.model import Seq2SeqTransformer


def has_torchao() -> bool:
    """Whether torchao, which quantizes the int8 programs, is installed."""
    return importlib.util.find_spec("torchao") is not None


def export_int8_program(
    model: Seq2SeqTransformer, program: str
) -> torch.export.ExportedProgram:
    """``program`` of the fp32 ``model`` with int8 linear layers, exported for the
    same sizes as :func:`~machine_translation.inference.fast.programs.export_program`.
    """
    # Its import notes (GPU kernels it skips, pytree registrations) are not ours to
    # act on: a user sees only errors.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
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
