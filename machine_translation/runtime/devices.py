"""Where and how computation runs: the device and the numeric precision.

- Device ``auto`` picks CUDA, then Apple's MPS, then the CPU.
- Precision ``auto`` picks bf16 autocast where the hardware computes in bf16 natively
  (CUDA GPUs since Ampere; CPUs with AVX-512 BF16 or AMX, where a bf16 matrix product
  runs several times faster than fp32), fp16 with a gradient scaler on older GPUs,
  else fp32. Autocast keeps the weights and the optimizer in fp32 and runs matrix
  products in the low precision.
- Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins a process
  group (NCCL on GPUs, Gloo on CPUs) and trains on its own shard of batches.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu; otherwise the named device.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:  # torch's own message is a paragraph
            raise ValueError(
                f"device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text(errors="ignore")
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_avx2() -> bool:
    """Whether this CPU has AVX2 or AVX-512, the x86 vector instructions that
    Inductor's own C++ matrix kernels (and PyTorch's weight-only int8 product) use."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → ``bf16``, ``fp16`` or ``fp32`` for ``device``; checks the others.

    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    """
    if name not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision={name!r} is not one of auto, bf16, fp16, fp32")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_inference_precision(name: str, device: torch.device) -> str:
    """:func:`resolve_precision`, plus ``int8`` for translation on the CPU.

    ``int8`` decodes with int8 linear layers (``inference.int8``): a choice of
    translation only, never ``auto``'s (``bench/README.md`` compares them).

    >>> resolve_inference_precision("int8", torch.device("cpu"))
    'int8'
    >>> resolve_inference_precision("int8", torch.device("meta"))
    Traceback (most recent call last):
    ...
    ValueError: precision='int8' runs on the CPU only (int8 linear layers); on meta use auto, bf16, fp16 or fp32
    """  # noqa: E501
    if name != "int8":
        return resolve_precision(name, device)
    if device.type != "cpu":
        raise ValueError(
            f"precision='int8' runs on the CPU only (int8 linear layers); on "
            f"{device.type} use auto, bf16, fp16 or fp32"
        )
    return name


def precision_dtype(precision: str) -> torch.dtype:
    """The tensor type of a (resolved) precision; for ``int8``, that of what is not
    quantized (embeddings, norms, attention over the cache).

    >>> precision_dtype("bf16")
    torch.bfloat16
    """
    return {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "int8": torch.float32,
    }[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a no-op for fp32 and int8)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision_dtype(precision))


def inference_precision(
    model: torch.nn.Module, device: torch.device, precision: str
) -> contextlib.AbstractContextManager:
    """How to run ``model`` in ``precision`` for inference.

    A model whose weights already are in that precision (see :func:`for_inference`)
    runs as it is; an fp32 model (the one being trained, at validation) runs under
    autocast, which casts weights and activations at every matrix product.
    """
    weights = next(model.parameters()).dtype
    if weights == precision_dtype(precision):
        return contextlib.nullcontext()
    return autocast(device, precision)


def for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Puts ``model`` in eval mode with its weights in ``precision``, in place.

    For translation this beats autocast: no cast per matrix product and per step,
    half the memory to read for weights (and, on a GPU, the KV cache) in bf16/fp16,
    and each step's small operations run on half-size tensors. On a CPU the KV
    cache stays in fp32 (``decoder_transformer.kv_cache.storage_dtype``).
    """
    return model.to(precision_dtype(precision)).eval().requires_grad_(False)


def share_cpu_threads(workers: int, device: torch.device) -> int:
    """Gives each of ``workers`` decoding threads its share of PyTorch's CPU threads.

    PyTorch's thread count is one setting for the whole process: with ``workers``
    batches decoded at once (``translate_token_ids``), each would otherwise start
    that many threads of its own and the cores would be oversubscribed.

    Returns:
        The threads per worker now (PyTorch's count, unchanged off the CPU or with
        one worker).
    """
    if workers > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    return torch.get_num_threads()
