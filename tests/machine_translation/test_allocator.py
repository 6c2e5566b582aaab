"""keep_freed_memory: a decoding step's large blocks are reused, not faulted in anew."""

import platform
import statistics
import subprocess
import sys

import pytest

from machine_translation.config.compose import PROJECT_ROOT

# A beam-search step at batch 64 with 5 beams and a 32k vocabulary: 320 × 32,000
# logits, 41 MB of fp32 log-probabilities (beyond the 32 MiB up to which glibc adapts
# its threshold by itself); count the page faults of each step.
SCRIPT = """
import resource, sys, torch
from machine_translation.runtime.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
if sys.argv[2] == "decoding":
    logits = torch.randn(320, 32000, dtype=torch.bfloat16)
    def step():
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        return log_probs.topk(10, dim=-1)
else:  # the default model's fp32 training step: 4,096 tokens x 8,000 logits, 131 MB
    logits = torch.randn(4096, 8000)
    def step():
        return (logits * 2).sum()
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def median_page_faults_per_step(mode: str = "keep", step: str = "decoding") -> float:
    """The median over 15 steps: the heap takes a few steps (1 to 4 seen) to settle."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, step],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return statistics.median(int(line) for line in result.stdout.split())


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only"
)
@pytest.mark.parametrize("step", ["decoding", "training"])
def test_freed_blocks_are_reused_without_page_faults(step):
    # 41 MB are 10,000 pages, 131 MB 32,000; kept memory is reused, so a step faults
    # in almost none of them. (What glibc's defaults do is glibc's business.)
    assert median_page_faults_per_step("keep", step) < 10


def test_reports_false_where_it_cannot_tune(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    from machine_translation.runtime.allocator import keep_freed_memory

    assert keep_freed_memory() is False
