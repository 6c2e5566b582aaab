"""Decoding speed: greedy and beam 5, batch 1 and 64, fp32 and bf16, with BLEU.

    python bench/decode_speed.py [--checkpoint runs/en-fr/.../best.pt] [--batch1 200]

Translates Multi30K test_2016_flickr (1,000 sentences; batch 1 uses the first
``--batch1`` of them) with the real search code (KV cache, finished sentences leave
the batch) and reports sentences/s, target tokens/s (generated tokens, EOS
included) and the BLEU of each setting. Settings run one after another in one
process; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.checkpoint import (  # noqa: E402
    find_checkpoint,
    load_translation_model,
)
from machine_translation.evaluate import builtin_test_set, score  # noqa: E402
from machine_translation.translator import translate_token_ids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--batch1", type=int, default=200, help="sentences at batch 1")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    checkpoint = Path(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    device = torch.device(args.device)
    model, tokenizer, _ = load_translation_model(checkpoint, device)
    test_set = builtin_test_set("multi30k")
    source_ids = tokenizer.encode_batch(test_set.sources)
    print(f"checkpoint: {checkpoint}")
    print(f"device: {device}, threads: {torch.get_num_threads()}")
    print("| search | batch | precision | sentences/s | target tokens/s | BLEU |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for beam_size in (1, 5):
        for batch_size in (64, 1):
            count = len(source_ids) if batch_size > 1 else args.batch1
            for precision in ("fp32", "bf16"):
                ids = source_ids[:count]
                translate_token_ids(  # warm-up
                    model, tokenizer, ids[:8], device, precision, beam_size=beam_size
                )
                start = time.perf_counter()
                translations = translate_token_ids(
                    model,
                    tokenizer,
                    ids,
                    device,
                    precision,
                    beam_size=beam_size,
                    batch_size=batch_size,
                )
                seconds = time.perf_counter() - start
                texts = [candidates[0].text for candidates in translations]
                generated = sum(len(tokenizer.encode(t)) + 1 for t in texts)
                bleu = score(texts, test_set.references[:count]).bleu
                search = "greedy" if beam_size == 1 else f"beam {beam_size}"
                print(
                    f"| {search} | {batch_size} | {precision} | {count / seconds:,.1f} "
                    f"| {generated / seconds:,.0f} | {bleu:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
