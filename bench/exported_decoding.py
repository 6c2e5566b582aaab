"""Greedy decoding with an ahead-of-time compiled decoding step against our eager path.

    python bench/exported_decoding.py
        [--checkpoint runs/en-fr/<run>/checkpoints/best.pt] [--batch 1]
        [--sentences 100] [--rounds 3] [--threads 2] [--package step.pt2]

The question after ``bench/compiled_decoding.py``: ``torch.compile`` made the step
1.48x as fast at batch 1, but compiled for a minute at every start. AOTInductor
compiles once into a package (a shared library and the weights) that a later process
loads in a fraction of a second, as CTranslate2 converts a model once.

The step is exported as a function of explicit tensors: the new tokens, the source
mask and every layer's cached keys and values; it returns the logits and the new
positions' keys and values, which the caller appends to its cache. Inside, the
decoder's own modules run on a stand-in cache that concatenates the new keys to the
given ones, so nothing of the model is rewritten. Freezing (under ``no_grad``) lets
inductor prepack the bf16 linear layers for oneDNN itself. The batch, the target
length (2 or more: the first two steps run eager) and the source length are
dynamic. Greedy search only: beam search folds a sentence's beams over one source
row, a shape relation this export does not cover. Needs a C++ compiler.

Reported: export and compile times, the load time, then sentences/s of eager (the
toolkit's ``for_inference`` model) and exported, alternating, and how many outputs
are identical. bf16 weights on Multi30K test_2016_flickr.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.allocator import keep_freed_memory  # noqa: E402
from machine_translation.checkpoint import (  # noqa: E402
    find_checkpoint,
    load_translation_model,
)
from machine_translation.evaluate import builtin_test_set  # noqa: E402
from machine_translation.runtime import for_inference  # noqa: E402
from machine_translation.translator import translate_token_ids  # noqa: E402


class GivenKeyValues:
    """A stand-in cache over given keys and values; records what ``update`` adds."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys, self.values = keys, values
        self.added: tuple[Tensor, Tensor] | None = None

    @property
    def length(self) -> int:
        return self.keys.size(2)

    @property
    def batch(self) -> int:
        return self.keys.size(0)

    def update(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        self.added = (keys, values)
        return (
            torch.cat([self.keys, keys.to(self.keys.dtype)], dim=2),
            torch.cat([self.values, values.to(self.values.dtype)], dim=2),
        )

    def read(self) -> tuple[Tensor, Tensor]:
        return self.keys, self.values


class GivenCache:
    """The decoder's view of a cache: per-layer self- and cross-attention caches."""

    def __init__(self, self_attention, cross_attention) -> None:
        self.self_attention, self.cross_attention = self_attention, cross_attention

    @property
    def length(self) -> int:
        return self.self_attention[0].length


class DecodingStep(nn.Module):
    """``(tokens, source_mask, caches)`` → ``(logits, new keys..., new values...)``.

    ``caches``: each layer's self-attention keys, then values ``(b, h, s, d_h)``,
    then cross-attention keys, then values ``(b, h, s_src, d_h)``.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder, self.layers = decoder, len(decoder.blocks)

    def forward(self, tokens: Tensor, source_mask: Tensor, caches: tuple[Tensor, ...]):
        n = self.layers
        own = [GivenKeyValues(caches[i], caches[n + i]) for i in range(n)]
        source = [
            GivenKeyValues(caches[2 * n + i], caches[3 * n + i]) for i in range(n)
        ]
        cache = GivenCache(own, source)
        # The source states are only read when the cross-attention cache is empty.
        logits = self.decoder.step(tokens, cache, caches[2 * n], source_mask)
        new_keys = [layer.added[0] for layer in own]
        new_values = [layer.added[1] for layer in own]
        return (logits[:, -1], *new_keys, *new_values)


def build_package(model, path: Path) -> tuple[float, float]:
    """Exports and compiles ``model``'s bf16 decoding step to ``path``; seconds."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    step = DecodingStep(bf16.decoder).eval()
    n, heads = len(bf16.decoder.blocks), model.config.n_heads
    width = model.config.d_model // heads
    batch, length, source_length = 3, 5, 7
    example = (
        torch.randint(3, 100, (batch, 1)),
        torch.ones(batch, source_length, dtype=torch.bool),
        tuple(
            [torch.randn(batch, heads, length, width) for _ in range(2 * n)]
            + [torch.randn(batch, heads, source_length, width) for _ in range(2 * n)]
        ),
    )
    rows = torch.export.Dim("rows", min=1, max=1024)
    # 0 and 1 are special sizes to the exporter: the target length starts at 2.
    target = torch.export.Dim("target", min=2, max=model.config.max_positions - 1)
    source = torch.export.Dim("source", min=1, max=model.config.max_positions)
    dynamic = (
        {0: rows},
        {0: rows, 1: source},
        tuple(
            [{0: rows, 2: target} for _ in range(2 * n)]
            + [{0: rows, 2: source} for _ in range(2 * n)]
        ),
    )
    start = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(step, example, dynamic_shapes=dynamic)
        exported_at = time.perf_counter()
        # Freezing happens only without gradients: it prepacks the linear layers.
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs={"freezing": True}
        )
    return exported_at - start, time.perf_counter() - exported_at


def exported_decoder(model, package) -> nn.Module:
    """A ``for_inference`` model whose steps from the third on run ``package``."""
    decoder = for_inference(copy.deepcopy(model), "bf16")
    eager_step = decoder.decode_step
    n = len(decoder.decoder.blocks)

    def decode_step(next_tokens, encoder_hidden_states, source_mask, cache):
        if cache.length < 2:  # also computes the cross-attention keys and values
            return eager_step(next_tokens, encoder_hidden_states, source_mask, cache)
        own = [layer.read() for layer in cache.self_attention]
        source = [layer.read() for layer in cache.cross_attention]
        if source_mask is None:
            source_mask = torch.ones(
                next_tokens.size(0), source[0][0].size(2), dtype=torch.bool
            )
        caches = [keys.contiguous() for keys, _ in own]
        caches += [values.contiguous() for _, values in own]
        caches += [keys.contiguous() for keys, _ in source]
        caches += [values.contiguous() for _, values in source]
        logits, *added = package(next_tokens, source_mask, tuple(caches))
        for i, layer in enumerate(cache.self_attention):
            layer.update(added[i], added[n + i])
        return logits.unsqueeze(1)

    decoder.decode_step = decode_step
    return decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--package", help="reuse (or write) this package")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the translation commands
    checkpoint = Path(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
    source_ids = tokenizer.encode_batch(builtin_test_set("multi30k").sources)
    print(f"checkpoint: {checkpoint}; batch {args.batch}, threads {args.threads}")
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(args.package or Path(workdir) / "step.pt2")
        if not path.exists():
            export_seconds, compile_seconds = build_package(model, path)
            print(f"export {export_seconds:.1f} s, compile {compile_seconds:.1f} s")
        start = time.perf_counter()
        package = torch._inductor.aoti_load_package(str(path))
        print(f"package {path.stat().st_size / 2**20:.1f} MiB, loaded in "
              f"{time.perf_counter() - start:.2f} s")  # fmt: skip
        exported = exported_decoder(model, package)
        eager = for_inference(copy.deepcopy(model), "bf16")

        def run(decoder, count: int) -> tuple[float, list[str]]:
            begin = time.perf_counter()
            translations = translate_token_ids(
                decoder,
                tokenizer,
                source_ids[:count],
                torch.device("cpu"),
                "bf16",
                batch_size=args.batch,
            )
            texts = [candidates[0].text for candidates in translations]
            return count / (time.perf_counter() - begin), texts

        run(eager, 3 * args.batch)  # warm-up
        run(exported, 3 * args.batch)
        speeds: dict[str, list[float]] = {"eager": [], "exported": []}
        for round_ in range(args.rounds):
            outputs = {}
            for name, decoder in (("eager", eager), ("exported", exported)):
                speed, outputs[name] = run(decoder, args.sentences)
                speeds[name].append(speed)
            pairs = zip(outputs["eager"], outputs["exported"], strict=True)
            same = sum(a == b for a, b in pairs)
            print(
                f"round {round_ + 1}: eager {speeds['eager'][-1]:.1f}, exported "
                f"{speeds['exported'][-1]:.1f} sentences/s; "
                f"{same} of {args.sentences} outputs identical"
            )
    ratios = [e / a for a, e in zip(speeds["eager"], speeds["exported"], strict=True)]
    print(
        f"exported / eager: {statistics.median(ratios):.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
