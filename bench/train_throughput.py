"""Training throughput of the default translation model: fp32 vs bf16, memory, MFU.

    python bench/train_throughput.py [--model small] [--steps 12] [--rounds 2]

Real batches: the shipped training data (Multi30K + Tatoeba), the joint 8k BPE and
~4k-token batches, through the real training step (``Trainer._optimizer_step``: fused
label-smoothed loss, AdamW, clipping). The two precisions alternate over the same
batches in one process, so their ratio is measured under the same machine load.

Reported: source+target tokens/s (real tokens, padding excluded); peak memory of a
process that trains in one precision only (on a CPU the peak resident set size
while training, the corpus in memory included but not the BPE training before it;
on CUDA the allocator's peak); model FLOPs utilisation (MFU): the model's training
FLOPs per second over this machine's bf16 matrix-product peak, measured at the start
of the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.config import (  # noqa: E402
    OptimConfig,
    ScheduleConfig,
    TrainerConfig,
    load_model_config,
)
from machine_translation.data import CorpusSpec  # noqa: E402
from machine_translation.model import Seq2SeqTransformer  # noqa: E402
from machine_translation.runtime import resolve_device  # noqa: E402
from machine_translation.tokenizer import BPETokenizer  # noqa: E402
from machine_translation.train import load_corpora  # noqa: E402
from machine_translation.training import Trainer  # noqa: E402
from machine_translation.translation_task import (  # noqa: E402
    TranslationTask,
    encode_corpus,
)

TRAIN = [
    CorpusSpec(
        kind="aligned",
        source="data/multi30k/train.en.gz",
        target="data/multi30k/train.fr.gz",
    ),
    CorpusSpec(kind="tsv", path="data/tatoeba/eng-fra.tsv.gz", split="train"),
]


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """FLOP/s of a large square matrix product: this machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats, best = 10, float("inf")
    for _ in range(3):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


def training_flops(config, source_lengths, target_lengths) -> float:
    """Forward+backward FLOPs of one batch (3x the forward's multiply-adds x 2).

    Counts the linear layers, attention scores and weighted sums (self-attention in
    both stacks, cross-attention) and the LM head, for the real tokens.
    """
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    kv = config.n_kv_heads * config.head_dim
    ffn = (3 if config.activation == "swiglu" else 2) * d * f
    projections = 2 * d * d + 2 * d * kv  # Q, O and K, V
    forward = 0.0
    for s, t in zip(source_lengths, target_lengths, strict=True):
        forward += config.encoder_layers * s * (projections + ffn + 2 * s * d)
        decoder_self = projections + 2 * t * d / 2  # causal: half the scores
        cross = 2 * d * d + 2 * s * d  # Q, O per target token; K, V per source below
        forward += config.decoder_layers * (
            t * (decoder_self + cross + ffn) + s * 2 * d * kv
        )
        forward += t * d * v  # LM head
    return 3 * 2 * forward


def prepare(model_name: str, device: torch.device):
    corpus = load_corpora(TRAIN, 9.0)
    tokenizer = BPETokenizer.train(corpus.sources + corpus.targets, 8000)
    encoded, _ = encode_corpus(corpus, tokenizer, 128, 128)
    config = load_model_config(model_name, vocab_size=tokenizer.vocab_size)
    return tokenizer, encoded, config


def build_trainer(tokenizer, encoded, config, device, precision, run_dir):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(config)
    task = TranslationTask(model, tokenizer, encoded, encoded, 4096, seed=1)
    trainer = Trainer(
        task,
        OptimConfig(),
        ScheduleConfig(),
        TrainerConfig(progress=False),
        run_dir,
        device,
        precision,
    )
    return trainer, task


def peak_memory_child(model_name: str, precision: str, steps: int) -> None:
    """Trains ``steps`` steps in one precision and prints its peak memory in MiB."""
    device = resolve_device("auto")
    tokenizer, encoded, config = prepare(model_name, device)
    trainer, task = build_trainer(
        tokenizer, encoded, config, device, precision, Path("/tmp/bench_run")
    )
    # Data preparation (BPE training) peaks higher than training: reset the peak
    # so that only training counts.
    reset_peak_memory(device)
    for batch in itertools.islice(task.batches(), steps):
        trainer._optimizer_step([batch])
    print(json.dumps({"peak_mib": peak_memory_mib(device)}))


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new peak: CUDA's allocator peak, or the resident set size's (Linux:
    ``clear_refs 5`` resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory`, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status").read_text().splitlines()
    return (
        next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--memory-child", choices=["fp32", "bf16"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.model, args.memory_child, 6)
        return

    device = resolve_device("auto")
    peak_bf16 = matmul_peak(device, torch.bfloat16)
    peak_fp32 = matmul_peak(device, torch.float32)
    tokenizer, encoded, config = prepare(args.model, device)
    batches = None
    results = {}
    trainers = {}
    for precision in ("fp32", "bf16"):
        trainers[precision], task = build_trainer(
            tokenizer, encoded, config, device, precision, Path("/tmp/bench_run")
        )
        if batches is None:
            batches = list(itertools.islice(task.batches(), args.steps + 2))
        results[precision] = {"seconds": 0.0, "tokens": 0, "flops": 0.0}
    for _ in range(args.rounds):  # alternate: both see the same load
        for precision, trainer in trainers.items():
            results[precision]["seconds"] += timed_steps(trainer, batches, device)
            for batch in batches[2:]:
                tokens = batch.source_tokens + batch.target_tokens
                results[precision]["tokens"] += tokens
                results[precision]["flops"] += training_flops(
                    config,
                    batch.source_mask.sum(1).tolist(),
                    batch.target_mask.sum(1).tolist(),
                )
    for precision in results:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--memory-child",
                precision,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        results[precision].update(json.loads(child.stdout.strip().splitlines()[-1]))

    print(f"device: {device}, threads: {torch.get_num_threads()}, model: {args.model}")
    print(
        f"matmul peak: bf16 {peak_bf16 / 1e12:.2f} TFLOP/s, "
        f"fp32 {peak_fp32 / 1e12:.2f} TFLOP/s"
    )
    for precision, r in results.items():
        tokens_per_second = r["tokens"] / r["seconds"]
        achieved = r["flops"] / r["seconds"]
        print(
            f"{precision}: {tokens_per_second:,.0f} source+target tokens/s, "
            f"{achieved / 1e12:.3f} TFLOP/s, MFU {achieved / peak_bf16:.1%} of the "
            f"bf16 peak, peak memory {r['peak_mib']:,.0f} MiB"
        )
    speedup = (results["bf16"]["tokens"] / results["bf16"]["seconds"]) / (
        results["fp32"]["tokens"] / results["fp32"]["seconds"]
    )
    print(f"bf16 / fp32 speed: {speedup:.2f}x")


def timed_steps(trainer: Trainer, batches: list, device: torch.device) -> float:
    """Seconds of training steps on ``batches[2:]``, after two warm-up steps."""
    for batch in batches[:2]:
        trainer._optimizer_step([batch])
    _synchronize(device)
    start = time.perf_counter()
    for batch in batches[2:]:
        trainer._optimizer_step([batch])
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
