"""Compiled packages on disk: named by what they came from, compiled once."""

from __future__ import annotations

import copy
import hashlib
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

import decoder_transformer
import encoder_transformer
from machine_translation.inference import beam_choice, greedy_choice
from machine_translation.inference.fast.int8_programs import (
    export_int8_program,
    has_torchao,
)
from machine_translation.inference.fast.programs import (
    export_program,
    programs,
)
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.devices import precision_dtype

logger = logging.getLogger(__name__)

# The modules of this package that a compiled program's code (and how Inductor
# compiles it) comes from.
PROGRAM_SOURCES = (
    "programs",
    "exported_modules",
    "int8_programs",
    "stand_in_cache",
    "packages",
)


def package_path(
    model: Seq2SeqTransformer, directory: Path, precision: str, program: str
) -> Path:
    """Where ``model``'s compiled ``program`` is kept: named by what it came from.

    A package embeds the weights and the code it was compiled from, so its name
    holds the program (:func:`programs`), the precision and a fingerprint of the
    weights, of the model's source code (the two lower packages,
    :data:`PROGRAM_SOURCES`, ``beam_choice`` and ``greedy_choice``) and of PyTorch's
    version: a retrained or averaged model, or changed code, gets a package of its own.
    """
    digest = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).parent
    sources = [here / f"{name}.py" for name in PROGRAM_SOURCES]
    sources += [Path(beam_choice.__file__), Path(greedy_choice.__file__)]
    for package in (encoder_transformer, decoder_transformer):
        sources += sorted(Path(package.__file__).parent.glob("*.py"))
    for source in sources:
        digest.update(source.read_bytes())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        )
    return directory / f"{program}_{precision}_{digest.hexdigest()[:16]}.pt2"


def check_supported(model: Seq2SeqTransformer, precision: str) -> None:
    """Raises ValueError for what a compiled step does not cover."""
    if precision not in ("bf16", "fp32", "int8"):
        raise ValueError(
            f"precision={precision!r}: a compiled step is bf16, fp32 or int8"
        )
    if precision == "int8" and not has_torchao():
        raise ValueError(
            "int8 compiled programs need torchao: pip install -e '.[int8]'"
        )
    if model.config.attention != "standard":
        raise ValueError("a compiled step needs standard attention (not latent)")


def compile_program(
    model: Seq2SeqTransformer, program: str, path: Path, precision: str = "bf16"
) -> Path:
    """Exports and compiles ``model``'s ``program`` into the package ``path``.

    Args:
        model: A translation model as loaded, not prepared for inference (left
            unchanged: a copy is compiled).
        program: One of :func:`programs`.
        path: The ``.pt2`` file to write (its folder is created).
        precision: ``bf16`` or ``fp32``, the weights' type in the package, or
            ``int8``: fp32 with int8 linear layers (``int8_programs``).

    Returns:
        ``path``.
    """
    check_supported(model, precision)
    dtype = precision_dtype(precision)
    compiled = copy.deepcopy(model).to("cpu", dtype).eval().requires_grad_(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    export = export_int8_program if precision == "int8" else export_program
    with torch.no_grad(), warnings.catch_warnings():
        # Inductor's own notes as it compiles (its int8 lowering and autotuning
        # call APIs that PyTorch deprecates): nothing for a user to act on.
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        exported = export(compiled, program)
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs=inductor_configs(program)
        )
    logger.info("compiled %s in %.0f s: %s", program, time.perf_counter() - start, path)
    return path


def inductor_configs(program: str) -> dict:
    """How Inductor compiles ``program``: without gradients it freezes the weights
    and prepacks the linear layers; a few-rows step's products are its own C++
    kernels (the CPP GEMM template), chosen by timing them as it compiles."""
    configs = {"freezing": True}
    if program.endswith("_few"):
        configs |= {
            "max_autotune": True,
            "max_autotune_gemm_backends": "CPP,ATEN",
            # (its tables and statistics, on stderr)
            "autotune_num_choices_displayed": 0,
            "max_autotune_report_choices_stats": False,
        }
    return configs


class CompileError(RuntimeError):
    """A program could not be compiled (e.g. no C++ compiler)."""


def compiled_package(
    model: Seq2SeqTransformer, directory: Path, precision: str, program: str
) -> Path:
    """The package of ``model``'s ``program`` in ``directory``, compiled if missing.

    Call it before ``runtime.for_inference`` (which converts the model in place):
    the program is compiled from a copy of the model as loaded.

    Args:
        model: A translation model as loaded.
        directory: Where packages are kept.
        precision: ``bf16``, ``fp32`` or ``int8``.
        program: One of :func:`programs`.

    Raises:
        ValueError: a precision or an attention kind the compiled step lacks.
        CompileError: compiling failed; the message says what to do.
    """
    check_supported(model, precision)
    path = package_path(model, directory, precision, program)
    if path.exists():
        return path
    logger.warning("compiling %s once (under a minute)", program)
    partial = path.with_suffix(".partial.pt2")
    try:
        compile_program(model, program, partial, precision)
    except ValueError:
        raise
    except Exception as error:  # the compiler's or exporter's own errors
        partial.unlink(missing_ok=True)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise CompileError(
            f"could not compile {program} ({type(error).__name__}: {first_line}); "
            "run without --compiled (compiling needs a C++ compiler such as g++)"
        ) from error
    partial.replace(path)  # whole packages only, even if interrupted
    return path


def compiled_packages(
    model: Seq2SeqTransformer,
    directory: Path,
    precision: str,
    beam_sizes: Sequence[int] = (1,),
) -> dict[str, Path]:
    """The packages of every program the searches need, compiled where missing.

    Args:
        model: A translation model as loaded, on the CPU.
        directory: Where packages are kept.
        precision: ``bf16``, ``fp32`` or ``int8``.
        beam_sizes: The searches to compile a step for (1 = greedy).

    Returns:
        The package of each of :func:`programs`, by program.

    Raises:
        ValueError: the model is not on the CPU, or not covered (see
            :func:`check_supported`).
        CompileError: compiling failed.
    """
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"a compiled step runs on the CPU, not {device}")
    return {
        program: compiled_package(model, directory, precision, program)
        for program in programs(beam_sizes, precision)
    }
