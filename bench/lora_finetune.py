"""Fine-tuning cost: every weight vs LoRA adapters, on a trained default-size model.

    python bench/lora_finetune.py --base runs/en-fr/<run>/checkpoints/best.pt \\
        [--steps 12] [--rounds 2] [--precision auto] [--lora-dropout 0.05]

From a trained checkpoint, on real ~4k-token batches of the Tatoeba training split
(the corpus of ``+experiment=lora_tatoeba``) in the base's tokenizer, through the
real training step (``Trainer._optimizer_step``: fused loss, AdamW, clipping):

- ``full``: every weight trains (``finetune.method=full``);
- ``lora-qv``: LoRA on the attention's q and v, as ``conf/lora`` sets it (r=8,
  alpha 16, dropout 0.05 on the adapters' input; ``--lora-dropout`` overrides it);
- ``lora-all``: the same adapters on every linear layer (q k v o up down).

Reported per method: trainable parameters; the bytes of ``best.pt`` and ``last.pt``
as the Trainer writes them; training tokens/s (the methods alternate over the same
batches in one process, so their ratios are measured under the same machine load);
the peak memory of a process that trains with that method alone (CPU: peak resident
set size while training, the corpus in memory included; CUDA: the allocator's peak).
Then inference, for the model without adapters, ``lora-all`` with its adapters
unmerged, and merged: greedy decoding speed (generated target tokens/s, since the
models' outputs differ in length), and teacher-forced scoring of the same batches
(identical shapes for every model: the clean measure of what merging costs).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train_throughput import (
    _synchronize,
    peak_memory_mib,
    reset_peak_memory,
    timed_steps,
)

from encoder_transformer.lora import LoRAConfig, merge_lora
from machine_translation.checkpoints.files import load_checkpoint
from machine_translation.config.schema import (
    DecodingConfig,
    OptimConfig,
    ScheduleConfig,
    TrainerConfig,
)
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.corpus import CorpusSpec
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoders import InProcess
from machine_translation.runtime.devices import (
    autocast,
    resolve_device,
    resolve_precision,
)
from machine_translation.training.finetune import FineTuning
from machine_translation.training.recipes import load_corpora
from machine_translation.training.trainer import Trainer
from machine_translation.training.translation_task import encode_corpus

TATOEBA = CorpusSpec(kind="tsv", path="data/tatoeba/eng-fra.tsv.gz", split="train")
LORA_DEFAULTS = OmegaConf.load(ROOT / "conf" / "lora" / "default.yaml")
METHODS = ("full", "lora-qv", "lora-all")


def lora_config(method: str, dropout: float) -> LoRAConfig | None:
    """The adapters of ``method`` (None: full fine-tuning), rank and alpha as in
    ``conf/lora``."""
    if method == "full":
        return None
    targets = ("q", "v") if method == "lora-qv" else ("q", "k", "v", "o", "up", "down")
    return LoRAConfig(
        rank=LORA_DEFAULTS.rank,
        alpha=LORA_DEFAULTS.alpha,
        dropout=dropout,
        targets=targets,
    )


def prepare(base_path: Path):
    """The base checkpoint, its tokenizer, and the Tatoeba pairs in its tokens."""
    payload = load_checkpoint(base_path)
    tokenizer = BPETokenizer.from_json(payload["tokenizer"])
    corpus = load_corpora([TATOEBA], 9.0)
    encoded, _ = encode_corpus(corpus, tokenizer, 64, 64)
    return payload, tokenizer, encoded


def build_trainer(
    method, dropout, base_path, payload, tokenizer, encoded, device, precision
):
    """A Trainer fine-tuning the base with ``method``, as ``train`` builds it."""
    torch.manual_seed(0)
    fine_tuning = FineTuning(base_path.resolve(), payload, lora_config(method, dropout))
    model = fine_tuning.build_model()
    task = fine_tuning.task_type(model, tokenizer, encoded, encoded, 4096, seed=1)
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_{method}_"))
    trainer = Trainer(
        task,
        OptimConfig(),
        ScheduleConfig(warmup_steps=10),
        TrainerConfig(progress=False),
        run_dir,
        device,
        precision,
    )
    return trainer, task


def memory_child(args: argparse.Namespace) -> None:
    """Trains a few steps with one method alone and prints its peak memory."""
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    prepared = prepare(Path(args.base))
    trainer, task = build_trainer(
        args.memory_child,
        args.lora_dropout,
        Path(args.base),
        *prepared,
        device,
        precision,
    )
    reset_peak_memory(device)
    for batch in itertools.islice(task.batches(), 6):
        trainer._optimizer_step([batch])
    print(json.dumps({"peak_mib": peak_memory_mib(device)}))


def decoding_speed(model, tokenizer, sources, device, precision) -> tuple[float, float]:
    """Greedy decoding: (sentences/s, generated target tokens/s).

    Models that differ in their weights write outputs of different lengths, so the
    per-token rate is the one to compare between them. The models decode as
    validation does (``InProcess``, fp32 weights under autocast), left as trained.
    """
    decoding = DecodingConfig(beam_size=1, batch_size=64)
    _synchronize(device)
    start = time.perf_counter()
    translations = translate_token_ids(
        InProcess(model), tokenizer, sources, device, precision, decoding
    )
    _synchronize(device)
    seconds = time.perf_counter() - start
    texts = [nbest[0].text for nbest in translations]
    tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(texts))  # + EOS
    return len(sources) / seconds, tokens / seconds


def scoring_speed(model, batches, device, precision) -> float:
    """Teacher-forced forward passes over ``batches``: source+target tokens/s.

    Every model computes on exactly the same shapes here, unlike free decoding, so
    this is the clean test of what merging costs.
    """
    tokens = sum(b.source_tokens + b.target_tokens for b in batches)
    with torch.inference_mode(), autocast(device, precision):
        _synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            batch = batch.to(device)
            model(batch.source_ids, batch.source_mask, batch.target_input)
        _synchronize(device)
    return tokens / (time.perf_counter() - start)


def median_round(models: dict, rounds: int, measure):
    """``measure(model)`` for every model in turn, ``rounds + 1`` times; the first
    (warm-up) round is dropped and each model's median round kept (for tuples, the
    round with the median first element)."""
    measured = {name: [] for name in models}
    for _ in range(rounds + 1):
        for name, model in models.items():
            measured[name].append(measure(model))
    return {
        name: statistics.median_low(values[1:]) for name, values in measured.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a trained checkpoint")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--decode", type=int, default=300, help="sentences decoded")
    parser.add_argument(
        "--lora-dropout",
        type=float,
        default=LORA_DEFAULTS.dropout,
        help="dropout on the adapters' input (default: conf/lora's)",
    )
    parser.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    base_path = Path(args.base)
    payload, tokenizer, encoded = prepare(base_path)
    trainers, batches, results = {}, None, {}
    for method in METHODS:
        trainers[method], task = build_trainer(
            method,
            args.lora_dropout,
            base_path,
            payload,
            tokenizer,
            encoded,
            device,
            precision,
        )
        if batches is None:
            batches = list(itertools.islice(task.batches(), args.steps + 2))
        trainable = sum(
            p.numel() for p in trainers[method].model.parameters() if p.requires_grad
        )
        results[method] = {"trainable": trainable, "seconds": 0.0, "tokens": 0}
    for _ in range(args.rounds):  # alternate: every method sees the same load
        for method, trainer in trainers.items():
            results[method]["seconds"] += timed_steps(trainer, batches, device)
            results[method]["tokens"] += sum(
                b.source_tokens + b.target_tokens for b in batches[2:]
            )
    for method, trainer in trainers.items():
        for kind, with_training_state in (("best", False), ("last", True)):
            path = trainer.save(kind, with_training_state=with_training_state)
            results[method][f"{kind}_bytes"] = path.stat().st_size
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--base",
                args.base,
                "--memory-child",
                method,
                "--precision",
                args.precision,
                "--lora-dropout",
                str(args.lora_dropout),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        results[method].update(json.loads(child.stdout.strip().splitlines()[-1]))

    # Inference: the base, lora-all's adapters (trained above, so B ≠ 0), merged.
    adapted = trainers["lora-all"].model.eval()
    merged = copy.deepcopy(adapted)
    merge_lora(merged)
    models = {
        "no adapters (full)": trainers["full"].model.eval(),  # the base's plain layers
        "lora-all unmerged": adapted,
        "lora-all merged": merged,
    }
    sources = encoded.source_ids[: args.decode]
    speeds = median_round(
        models,
        args.rounds,
        lambda m: decoding_speed(m, tokenizer, sources, device, precision),
    )
    scoring = median_round(
        models, args.rounds, lambda m: scoring_speed(m, batches, device, precision)
    )

    full = results["full"]
    full_speed = full["tokens"] / full["seconds"]
    print(f"device: {device}, threads: {torch.get_num_threads()}, {precision}")
    print(
        f"LoRA rank {LORA_DEFAULTS.rank}, alpha {LORA_DEFAULTS.alpha},"
        f" dropout {args.lora_dropout}"
    )
    print(f"base: {base_path}, {full['trainable']:,} parameters")
    print(
        "| method | trainable parameters | best.pt | last.pt | training tokens/s "
        "| vs full | peak memory |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, r in results.items():
        speed = r["tokens"] / r["seconds"]
        share = r["trainable"] / full["trainable"]
        print(
            f"| {method} | {r['trainable']:,} ({share:.2%})"
            f" | {r['best_bytes'] / 1e3:,.0f} KB | {r['last_bytes'] / 1e3:,.0f} KB"
            f" | {speed:,.0f} | {speed / full_speed:.2f}x | {r['peak_mib']:,.0f} MiB |"
        )
    print(
        f"greedy decoding, {len(sources)} Tatoeba sentences, batch 64 (median round):"
    )
    base_rate = speeds["no adapters (full)"][1]
    for name, (sentences, tokens) in speeds.items():
        print(
            f"  {name}: {sentences:.1f} sentences/s, {tokens:,.0f} target tokens/s"
            f" ({tokens / base_rate:.2f}x no adapters)"
        )
    print(
        f"teacher-forced scoring of the {len(batches)} training batches, median round:"
    )
    for name, rate in scoring.items():
        print(
            f"  {name}: {rate:,.0f} tokens/s"
            f" ({rate / scoring['no adapters (full)']:.2f}x no adapters)"
        )


if __name__ == "__main__":
    main()
