"""Training throughput of the default model against Hugging Face's MarianMT.

    python bench/train_throughput.py [--model small] [--steps 10] [--rounds 3]
    python bench/train_throughput.py --experiment multi30k --no-marian

Real batches: the shipped training data (Multi30K + Tatoeba), the joint 8k BPE and
~4k-token batches, through the real training step (``Trainer._optimizer_step``: fused
label-smoothed loss, AdamW, clipping); with ``--experiment``, that experiment's
corpora, BPE size, batch size, model and optimizer (``conf/experiment/<name>.yaml``).
As the train command, the process keeps freed memory for reuse
(``runtime/allocator.py``); ``--glibc-defaults`` leaves glibc's settings, for A/B
runs. When ``transformers`` is installed, a MarianMT of the same size
(``marian_reference.py``) trains on the same batches in the same process as a
transformers user would. Every system and precision (fp32, bf16 autocast)
has its own model and optimizer; they take turns, a round of ``--steps`` steps each,
so that all see the same machine load; the figures are medians over the rounds and the
ratios medians of per-round ratios.

Reported: source+target tokens/s (real tokens, padding excluded); peak memory of a
process that trains one system in one precision only (on a CPU the peak resident set
size while training, the corpus in memory included but not the BPE training before
it; on CUDA the allocator's peak); model FLOPs utilisation (MFU): the model's training
FLOPs per second over this machine's bf16 matrix-product peak, measured at the start
of the same run; minor page faults a step (fresh pages the kernel maps in: what
keeping freed memory saves).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir
from marian_reference import MarianTrainer, build_marian, transformers_available

from machine_translation.config.compose import (
    CONFIG_DIR,
    build_model_config,
    load_model_config,
    register_configs,
    to_train_config,
)
from machine_translation.config.schema import OptimConfig, ScheduleConfig, TrainerConfig
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.corpus import CorpusSpec
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.allocator import keep_freed_memory
from machine_translation.runtime.devices import resolve_device
from machine_translation.training.recipes import load_corpora
from machine_translation.training.trainer import Trainer
from machine_translation.training.translation_task import TranslationTask, encode_corpus

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


@dataclass
class Recipe:
    """What is trained: corpora, BPE size, batch size in tokens, model, optimizer."""

    corpora: list[CorpusSpec] = field(default_factory=lambda: TRAIN)
    vocab_size: int = 8000
    max_tokens: int = 4096
    max_length_ratio: float = 9.0
    model: str | dict = "small"  # a conf/model name, or an experiment's model node
    optim: OptimConfig = field(default_factory=OptimConfig)

    def model_config(self, vocab_size: int):
        if isinstance(self.model, str):
            return load_model_config(self.model, vocab_size=vocab_size)
        return build_model_config(self.model, vocab_size=vocab_size)


def load_recipe(model_name: str, experiment: str | None) -> Recipe:
    """The default data with ``conf/model/<model_name>``, or a whole experiment's."""
    if experiment is None:
        return Recipe(model=model_name)
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=[f"+experiment={experiment}"])
    config = to_train_config(cfg)
    return Recipe(
        corpora=config.data.train,
        vocab_size=config.data.vocab_size,
        max_tokens=config.data.max_tokens,
        max_length_ratio=config.data.max_length_ratio,
        model=config.model,
        optim=config.optim,
    )


def prepare(recipe: Recipe):
    corpus = load_corpora(recipe.corpora, recipe.max_length_ratio)
    tokenizer = BPETokenizer.train(corpus.sources + corpus.targets, recipe.vocab_size)
    encoded, _ = encode_corpus(corpus, tokenizer, 128, 128)
    return tokenizer, encoded, recipe.model_config(tokenizer.vocab_size)


def build_trainer(tokenizer, encoded, config, device, precision, run_dir, recipe):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(config)
    task = TranslationTask(
        model, tokenizer, encoded, encoded, recipe.max_tokens, seed=1
    )
    trainer = Trainer(
        task,
        recipe.optim,
        ScheduleConfig(),
        TrainerConfig(progress=False),
        run_dir,
        device,
        precision,
    )
    return trainer, task


def build_systems(tokenizer, encoded, config, device, names, precisions, recipe):
    """``{(system, precision): step function}``, each with its own model and AdamW."""
    steps = {}
    for name in names:
        for precision in precisions:
            if name == "ours":
                trainer, _ = build_trainer(
                    tokenizer,
                    encoded,
                    config,
                    device,
                    precision,
                    Path("/tmp/bench"),
                    recipe,
                )
                steps[name, precision] = lambda batch, t=trainer: t._optimizer_step(
                    [batch]
                )
            else:
                torch.manual_seed(0)
                model = build_marian(config, tokenizer.bos_id, tokenizer.eos_id)
                trainer = MarianTrainer(model, device, precision, recipe.optim)
                steps[name, precision] = trainer.step
    return steps


def fixed_batches(tokenizer, encoded, count: int, max_tokens: int) -> list:
    """The first ``count`` training batches of the default sampler (seed 1)."""
    task = TranslationTask(None, tokenizer, encoded, encoded, max_tokens, seed=1)
    return list(itertools.islice(task.batches(), count))


def peak_memory_child(recipe: Recipe, system: str, precision: str, steps: int):
    """Trains ``steps`` steps of one system in one precision; prints peak MiB."""
    device = resolve_device("auto")
    tokenizer, encoded, config = prepare(recipe)
    batches = fixed_batches(tokenizer, encoded, steps, recipe.max_tokens)
    step = build_systems(
        tokenizer, encoded, config, device, [system], [precision], recipe
    )
    # Data preparation (BPE training) peaks higher than training: reset the peak
    # so that only training counts.
    reset_peak_memory(device)
    for batch in batches:
        step[system, precision](batch)
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


def measure_peak_memory(arguments: list[str], system: str, precision: str) -> float:
    """Peak memory of a fresh process that trains only this system and precision."""
    command = [sys.executable, __file__, *arguments]
    child = subprocess.run(
        [*command, "--memory-child", f"{system}:{precision}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-marian", action="store_true", help="ours only")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    parser.add_argument(
        "--experiment", help="train as +experiment=NAME does (overrides --model)"
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's allocator settings (the train command keeps freed memory)",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.glibc_defaults:
        keep_freed_memory()
    recipe = load_recipe(args.model, args.experiment)
    if args.memory_child:
        system, precision = args.memory_child.split(":")
        peak_memory_child(recipe, system, precision, 6)
        return

    names = ["ours"]
    if args.no_marian:
        pass
    elif transformers_available():
        names.append("marian")
    else:
        print("transformers is not installed: MarianMT is skipped", file=sys.stderr)
    precisions = ["fp32", "bf16"]
    device = resolve_device("auto")
    peak_bf16 = matmul_peak(device, torch.bfloat16)
    peak_fp32 = matmul_peak(device, torch.float32)
    tokenizer, encoded, config = prepare(recipe)
    steps = build_systems(tokenizer, encoded, config, device, names, precisions, recipe)
    batches = fixed_batches(tokenizer, encoded, args.steps + 2, recipe.max_tokens)
    timed = batches[2:]
    tokens = sum(b.source_tokens + b.target_tokens for b in timed)
    flops = sum(
        training_flops(
            config, b.source_mask.sum(1).tolist(), b.target_mask.sum(1).tolist()
        )
        for b in timed
    )
    seconds = {key: [] for key in steps}
    faults = {key: [] for key in steps}  # minor page faults a step (fresh pages)
    order = list(steps)
    for round_index in range(args.rounds):
        # Systems take turns on the same batches, so that all see the same machine
        # load; every other round in reverse order, so that none always goes first.
        for key in order if round_index % 2 == 0 else order[::-1]:
            for batch in batches[:2]:  # warm-up
                steps[key](batch)
            _synchronize(device)
            faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            for batch in timed:
                steps[key](batch)
            _synchronize(device)
            seconds[key].append(time.perf_counter() - start)
            faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted
            faults[key].append(faulted / len(timed))
    memory = {}
    if not args.no_memory:
        arguments = ["--model", args.model]
        arguments += ["--experiment", args.experiment] if args.experiment else []
        arguments += ["--glibc-defaults"] if args.glibc_defaults else []
        memory = {key: measure_peak_memory(arguments, *key) for key in steps}
    report(device, args, config, peak_bf16, peak_fp32, tokens, flops, seconds, memory)
    for key, counts in faults.items():
        print(f"{' '.join(key)}: {statistics.median(counts):,.0f} page faults a step")


def report(device, args, config, peak_bf16, peak_fp32, tokens, flops, seconds, memory):
    """Prints medians over rounds: tokens/s, TFLOP/s, MFU, memory, ratios."""
    allocator = "glibc's defaults" if args.glibc_defaults else "freed memory kept"
    print(
        f"device: {device}, threads: {torch.get_num_threads()}, "
        f"model: {args.experiment or args.model} "
        f"({config.d_model}d, {config.n_heads} heads, FFN {config.d_ff}, "
        f"{config.encoder_layers}+{config.decoder_layers} layers, "
        f"vocab {config.vocab_size}); {args.rounds} rounds of {args.steps} steps, "
        f"{tokens:,} source+target tokens per round; allocator: {allocator}"
    )
    print(
        f"matmul peak: bf16 {peak_bf16 / 1e12:.2f} TFLOP/s, "
        f"fp32 {peak_fp32 / 1e12:.2f} TFLOP/s"
    )
    speed = {key: [tokens / s for s in times] for key, times in seconds.items()}
    for (system, precision), rates in speed.items():
        median = statistics.median(rates)
        achieved = median * flops / tokens
        peak = memory.get((system, precision))
        print(
            f"{system:>6} {precision}: {median:,.0f} source+target tokens/s "
            f"(rounds: {', '.join(f'{r:,.0f}' for r in rates)}), "
            f"{achieved / 1e12:.3f} TFLOP/s, MFU {achieved / peak_bf16:.1%} of the "
            "bf16 peak" + ("" if peak is None else f", peak memory {peak:,.0f} MiB")
        )
    for system in dict.fromkeys(system for system, _ in speed):
        ratios = [
            bf16 / fp32
            for bf16, fp32 in zip(
                speed[system, "bf16"], speed[system, "fp32"], strict=True
            )
        ]
        print(f"{system} bf16 / fp32: {statistics.median(ratios):.2f}x")
    if ("marian", "fp32") in speed:
        for precision in ("fp32", "bf16"):
            ratios = [
                ours / marian
                for ours, marian in zip(
                    speed["ours", precision], speed["marian", precision], strict=True
                )
            ]
            print(
                f"ours / MarianMT, {precision}: {statistics.median(ratios):.2f}x "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )


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
