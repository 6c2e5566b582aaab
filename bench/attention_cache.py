"""Decoder cache size and cached decoding speed: MHA, GQA, MQA and MLA at one width.

    python bench/attention_cache.py [--steps 256] [--batches 64 1] [--layers 6]

Builds one GPT per attention kind at the same d_model (default 512, 8 heads of 64, FFN
2048, 6 layers, RoPE, vocabulary 8000, fp32, random weights): multi-head attention,
grouped-query attention with n_heads/4 key/value heads, multi-query attention, and
multi-head latent attention with a latent of 4·d_h (DeepSeek-V2's ratio) and of 2·d_h,
decoding with the up-projections absorbed and, for comparison, re-expanding the cached
latents at every step. Each model decodes ``--steps`` tokens one at a time from an
empty cache (fixed random tokens: the speed of a step does not depend on which token
it is), for each batch size. Reported: cache bytes per token per layer and for the
whole decoder (measured from the cache's stored tensors), and tokens/s of the step
loop; ratios are against MHA. Settings alternate in rounds and the fastest round of
each counts, which damps the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decoder_transformer.cache import DecoderCache
from decoder_transformer.gpt import GPT
from encoder_transformer.config import TransformerConfig


@dataclass
class Setting:
    name: str
    attention: dict
    absorb: bool = True


def settings(n_heads: int, head_dim: int) -> list[Setting]:
    return [
        Setting("MHA", {"n_kv_heads": n_heads}),
        Setting(f"GQA ({n_heads // 4} KV heads)", {"n_kv_heads": n_heads // 4}),
        Setting("MQA", {"n_kv_heads": 1}),
        Setting(
            f"MLA (d_c {4 * head_dim}, absorbed)",
            {"attention": "latent", "kv_latent_dim": 4 * head_dim},
        ),
        Setting(
            f"MLA (d_c {4 * head_dim}, re-expanded)",
            {"attention": "latent", "kv_latent_dim": 4 * head_dim},
            absorb=False,
        ),
        Setting(
            f"MLA (d_c {2 * head_dim}, absorbed)",
            {"attention": "latent", "kv_latent_dim": 2 * head_dim},
        ),
    ]


def cache_bytes_per_token(cache: DecoderCache, batch: int) -> list[float]:
    """Stored bytes per token (one sequence) of each layer's self-attention cache."""
    per_layer = []
    for layer in cache.self_attention:
        stored = layer.read()
        tensors = stored if isinstance(stored, tuple) else (stored,)
        per_layer.append(sum(t.nbytes for t in tensors) / (batch * cache.length))
    return per_layer


def decode(model: GPT, tokens: torch.Tensor) -> tuple[float, DecoderCache]:
    """Seconds to decode ``tokens`` ``(b, steps)`` one step at a time, and the cache."""
    cache = model.new_cache()
    start = time.perf_counter()
    for t in range(tokens.size(1)):
        model.step(tokens[:, t : t + 1], cache)
    return time.perf_counter() - start, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = {
        "vocab_size": 8000,
        "d_model": args.d_model,
        "n_heads": args.heads,
        "d_ff": 4 * args.d_model,
        "decoder_layers": args.layers,
        "positions": "rope",
        "max_positions": args.steps,
        "dropout": 0.0,
    }
    head_dim = args.d_model // args.heads
    runs = settings(args.heads, head_dim)
    models = []
    for setting in runs:
        model = GPT(TransformerConfig(**base, **setting.attention)).eval()
        for block in model.decoder.blocks:
            if hasattr(block.self_attention, "absorb"):
                block.self_attention.absorb = setting.absorb
        models.append(model)
    print(
        f"d_model {args.d_model}, {args.heads} heads of {head_dim}, "
        f"{args.layers} layers, RoPE, fp32, {args.steps} steps from an empty cache, "
        f"threads: {torch.get_num_threads()}"
    )
    seconds = {}
    sizes = {}
    with torch.no_grad():
        for batch in args.batches:
            tokens = torch.randint(4, base["vocab_size"], (batch, args.steps))
            for model in models:  # warm-up
                decode(model, tokens[:, :16])
            for _ in range(args.rounds):
                for setting, model in zip(runs, models, strict=True):
                    elapsed, cache = decode(model, tokens)
                    key = (setting.name, batch)
                    seconds[key] = min(elapsed, seconds.get(key, float("inf")))
                    sizes[setting.name] = cache_bytes_per_token(cache, batch)
    batch_columns = " | ".join(f"tokens/s, batch {b} (× MHA)" for b in args.batches)
    print(f"| attention | cache bytes/token/layer | whole decoder | {batch_columns} |")
    print("| --- | ---: | ---: |" + " ---: |" * len(args.batches))
    mha_bytes = sum(sizes["MHA"])
    for setting in runs:
        layer_bytes, total = sizes[setting.name][0], sum(sizes[setting.name])
        speeds = []
        for batch in args.batches:
            speed = batch * args.steps / seconds[(setting.name, batch)]
            mha_speed = batch * args.steps / seconds[("MHA", batch)]
            speeds.append(f"{speed:,.0f} ({speed / mha_speed:.2f}×)")
        print(
            f"| {setting.name} | {layer_bytes:,.0f} | {total:,.0f} "
            f"({total / mha_bytes:.3f}×) | " + " | ".join(speeds) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
