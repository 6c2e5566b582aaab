"""The GPT mode's training speed and quality against time, as a user runs it.

    python bench/gpt_train.py                       # the default CPU config
    python bench/gpt_train.py +experiment=gpt_large # nanoGPT's 6×384 size (GPU)

Runs ``python -m machine_translation.train --config-name gpt [overrides]`` in a
subprocess, timing the whole command (start-up, data, training, final validation,
checkpoints), then reads the run's ``metrics.jsonl`` for iterations/s, tokens/s and
the loss-versus-time curve. MFU is the model's training FLOPs per second over this
machine's bf16 matrix-product peak, measured in the same run. The curve is written
to ``bench/results/gpt_<name>_curve.png`` with nanoGPT's reference point.

Reference (measured on this machine by the issue's author): nanoGPT's 4-layer,
128-wide character model reaches a validation loss of 1.886 nats/char after 2,000
iterations (batch 12 × 64 characters) in 87 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_throughput import matmul_peak

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.runtime.devices import resolve_device

NANOGPT_SECONDS, NANOGPT_LOSS = 87.0, 1.886


def training_flops_per_token(model_config: dict, context: int) -> float:
    """Forward+backward FLOPs per token: ``6·N + 12·L·d·T`` (PaLM's estimate).

    ``N`` counts the matrices each token multiplies through (the blocks' linear
    layers and the LM head; not the embedding lookup); ``12·L·d·T`` the attention
    scores and weighted sums over a ``T``-token context.
    """
    d, layers = model_config["d_model"], model_config["decoder_layers"]
    head_dim = d // model_config["n_heads"]
    kv_width = model_config["n_kv_heads"] * head_dim
    attention = d * d + 2 * d * kv_width + d * d  # Wq, Wk and Wv, Wo
    ffn_matrices = 3 if model_config["activation"] == "swiglu" else 2
    ffn = ffn_matrices * d * model_config["d_ff"]
    matrices = layers * (attention + ffn) + d * model_config["vocab_size"]
    return 6 * matrices + 12 * layers * d * context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    device = resolve_device("auto")
    peak = matmul_peak(device, torch.bfloat16)
    with tempfile.TemporaryDirectory() as runs_dir:
        command = [
            sys.executable,
            "-m",
            "machine_translation.train",
            "--config-name",
            "gpt",
            f"runs_dir={runs_dir}",
            "trainer.progress=false",
            *args.overrides,
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        wall_seconds = time.perf_counter() - start
        run_dir = next(Path(runs_dir).glob("*/*"))
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        run_config = _yaml(run_dir / "config.yaml")
        name = run_dir.parent.name
        model_config = torch.load(
            run_dir / "checkpoints" / "last.pt", weights_only=True
        )["model_config"]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    data = run_config["data"]
    steps, train_seconds = train[-1]["step"], train[-1]["elapsed_seconds"]
    tokens_per_step = data["batch_size"] * data["block_size"]
    tokens_per_second = steps * tokens_per_step / train_seconds
    flops = training_flops_per_token(model_config, data["block_size"])
    result = {
        "device": str(device),
        "wall_seconds": round(wall_seconds, 1),
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "iterations_per_second": round(steps / train_seconds, 2),
        "tokens_per_second": round(tokens_per_second),
        "mfu": round(tokens_per_second * flops / peak, 3),
        "bf16_peak_tflops": round(peak / 1e12, 3),
        "final_valid_nats_per_char": round(valid[-1]["nats_per_char"], 4),
        "precision": run_config["trainer"]["precision"],
        "overrides": args.overrides,
    }
    print(json.dumps(result, indent=2))
    plot(train, valid, wall_seconds, name)


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def plot(train: list[dict], valid: list[dict], wall_seconds: float, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(
        [r["elapsed_seconds"] for r in train],
        [r["loss"] for r in train],
        label="train loss",
        alpha=0.7,
    )
    axis.plot(
        [r["elapsed_seconds"] for r in valid],
        [r["nats_per_char"] for r in valid],
        "o-",
        label="validation (nats/char)",
    )
    axis.axhline(NANOGPT_LOSS, color="gray", linestyle="--", linewidth=1)
    axis.plot(
        [NANOGPT_SECONDS], [NANOGPT_LOSS], "x", color="black", label="nanoGPT 4×128"
    )
    axis.axvline(wall_seconds, color="tab:red", linewidth=1, label="command ends")
    axis.set_xlabel("seconds of training")
    axis.set_ylabel("loss (nats/char)")
    axis.set_ylim(1.0, 3.5)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    out = Path(__file__).parent / "results" / f"gpt_{name}_curve.png"
    out.parent.mkdir(exist_ok=True)
    figure.savefig(out, dpi=100)
    print(f"curve: {out}")


if __name__ == "__main__":
    main()
