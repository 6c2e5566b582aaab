"""Memory allocation for the commands: keep freed memory in the process for reuse.

PyTorch has no caching allocator on the CPU: every tensor is ``malloc``-ed and freed
by the C library. A decoding step allocates and frees the same few large blocks again
and again (the scores of a beam-search step at batch 64: 320 × 8,000 values, 5 MB of
bf16 logits and 10 MB of fp32 log-probabilities). glibc serves blocks that large
with fresh pages from the kernel (``mmap``, or the top of its heap, which it gives
back when freed), and each fresh page faults in at first touch. glibc adapts its
threshold to the blocks it sees, up to 32 MiB, but not always in time: in a
microbenchmark on this project's CPU the log-softmax of 64 × 8,000 scores ran 1.46
ms with its defaults and 0.23 ms with the blocks kept.

Raising glibc's two thresholds keeps such blocks in the process once freed, and the
next step reuses them without page faults. Beam search at batch 64 ran 1.15× as fast
(decoding alone) and the translate command 1.06× (start-up and input included);
greedy search, whose blocks are five times smaller, and batch 1 showed no change
beyond this machine's noise (``bench/README.md``). A training step does the same with
its logits and their gradient (24 MB each for the tiny Multi30K model's 2,048-token
batches): with glibc's defaults such a step faulted in 6,000 to 12,000 fresh pages,
with the blocks kept 229 to 600 (a Zen 4 EPYC, 2026-12-07). The price is that the
process keeps its peak memory until it exits, which suits a command that trains or
decodes and exits: the commands call :func:`keep_freed_memory` at start-up; the
library never does it by itself.

Another allocator (tcmalloc, jemalloc) must be preloaded before Python starts
(``LD_PRELOAD``); tcmalloc was faster still here, for decoding and for training
(README, "Faster on Linux").
"""

from __future__ import annotations

import ctypes
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap, not from mmap (a decoding step's
# largest blocks are ~10 MB at batch 64 with 5 beams; a training step of the default
# model in fp32 has 131 MB of logits and as much gradient, 4,096 tokens × 8,000).
MMAP_THRESHOLD_BYTES = 256 << 20
# Free memory at the top of the heap is given back to the kernel only beyond this.
TRIM_THRESHOLD_BYTES = 512 << 20


def keep_freed_memory() -> bool:
    """Makes glibc keep freed blocks (up to 256 MiB each) for reuse; process-wide.

    Returns:
        Whether the C library is glibc and accepted both settings (elsewhere, e.g.
        on macOS or musl, nothing changes and this returns False).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    accepted = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    accepted &= mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(accepted)
