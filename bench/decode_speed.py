"""Decoding speed: ours against Hugging Face ``generate`` and CTranslate2, same model.

    python bench/decode_speed.py [--checkpoint runs/en-fr/<run>/checkpoints/best.pt]
        [--threads 2] [--repeats 3] [--batch1 100] [--sentences 1000]
        [--systems ours hf ct2 ct2-int8] [--precisions fp32 bf16 int8]
        [--keep-freed-memory] [--workers 2] [--compiled]
        [--preload /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4]

Translates Multi30K test_2016_flickr (1,000 sentences at batch 64; the first
``--batch1`` of them at batch 1) with greedy search and beam 5,
and reports sentences/s, target tokens/s (output tokens + EOS, counted by
re-tokenizing each output) and the BLEU of each setting. Ours runs the toolkit's
own path (``translate_token_ids``: sorted batches, KV cache, weights in the
precision asked: ``--precisions``, fp32, bf16 and int8 by default). The references
run our trained weights as the export writes them
(``machine_translation.exporting``: a Pegasus model, the same architecture and the
same greedy outputs, and CTranslate2's conversion of it): Hugging Face ``generate``
(fp32 and bf16 weights), CTranslate2 float32 (it has no bf16 on CPU) and
CTranslate2 int8 (``compute_type="int8"`` on the same converted weights, what a
deploying user picks), each CTranslate2 in a process of its own. They are skipped
with a message when not installed (``pip install -e '.[export]'``).

The machine may be shared: every setting runs once per round, the rounds repeat
``--repeats`` times, so that all systems see the same load, and the table gives
each setting's median with all runs listed. Each system runs in its own process
(a fresh one per round, after a warm-up): CTranslate2 brings its own OpenMP
runtime, and the two runtimes' threads slow each other down. With CTranslate2 loaded
in the same process our decoding ran at about 0.6 of its speed (greedy, batch 64,
bf16: 170 against 269 sentences/s), and CTranslate2 beside PyTorch's 2-thread pool
at about half of its own; its process therefore keeps PyTorch to one thread.

Each decoding step allocates and frees megabytes of scores, and glibc hands large
blocks back to the kernel, which must then fault the pages in again. Two options
change that in every system's process alike: ``--keep-freed-memory`` makes glibc
keep them (``machine_translation.runtime.allocator``, what the translation
commands do), ``--preload`` loads a shared library (``LD_PRELOAD``), e.g. a faster
allocator than glibc's (tcmalloc, from Debian's ``libtcmalloc-minimal4``).

``--workers N`` decodes N batches at once, each on ``threads / N`` threads: ours
with ``batch_decoder(model, precision, workers=N)`` (N threads), CTranslate2 with
``inter_threads=N, intra_threads=threads / N``. Hugging Face ``generate`` has no
such option and runs as without it.

``--compiled`` adds ours with the encoder and decoding steps compiled ahead of time
(in each of ``--compiled-precisions``, by default what ``--precision auto`` picks on
this CPU: bf16 where it multiplies bf16 in hardware, fp32 elsewhere; ``int8`` for
int8 linear layers, with torchao;
``batch_decoder(..., compiled=True)``, which hands over to
``machine_translation.inference.fast``): one batch at a time on all threads, and
with ``--workers N`` also on N worker processes of ``threads / N`` threads
(``machine_translation.inference.fast.processes``: a compiled program holds
Python's interpreter lock while it runs, so threads would take turns). The
processes have loaded before the timing. The packages are built in the first
round's process (about half a minute each, before the timing) and loaded by the
later ones.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.schema import DecodingConfig
from machine_translation.data.batching import collate
from machine_translation.evaluation.scoring import score
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.inference.fast.processes import DecodingProcesses
from machine_translation.runtime.allocator import keep_freed_memory
from machine_translation.runtime.devices import resolve_precision

MAX_LENGTH_A, MAX_LENGTH_B = 1.5, 10  # our output length limit, given to all
CT2_COMPUTE = {"ct2": "float32", "ct2-int8": "int8"}  # system → compute_type
DECODERS: list = []  # ours' batch decoders, closed at the end of a round


@dataclass
class Setting:
    system: str  # ours | hugging face | ctranslate2
    search: str  # greedy | beam 5
    batch: int
    precision: str
    translate: Callable[[list[list[int]]], list[str]] | None  # source ids → texts
    threads: int | None = None  # PyTorch's threads while it runs (None: as set)
    warm_up: int = 8  # sentences translated before the timing
    seconds: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def ours(
    model, tokenizer, precision, beam, batch, workers=1, compiled_in=None, threads=1
) -> Callable:
    """Our translation path, from ``batch_decoder``: eager on ``workers`` threads;
    with ``compiled_in`` (a folder), the compiled programs, on ``workers`` processes
    of ``threads`` threads each if ``workers > 1``."""
    decoding = DecodingConfig(
        beam_size=beam,
        length_penalty=1.0,
        max_length_a=MAX_LENGTH_A,
        max_length_b=MAX_LENGTH_B,
        batch_size=batch,
    )
    own_threads = torch.get_num_threads()
    if compiled_in is not None and workers > 1:
        torch.set_num_threads(threads)  # worker processes start with this count
    try:
        decoder = batch_decoder(
            copy.deepcopy(model),  # (converted in place)
            precision,
            workers=workers,
            compiled=compiled_in is not None,
            directory=compiled_in,
            beam_sizes=[beam],
        )
    finally:
        torch.set_num_threads(own_threads)
    if isinstance(decoder, DecodingProcesses):
        decoder.wait_until_loaded()  # none may load while another setting runs
    DECODERS.append(decoder)

    def translate(source_ids):
        translations = translate_token_ids(
            decoder, tokenizer, source_ids, torch.device("cpu"), precision, decoding
        )
        return [candidates[0].text for candidates in translations]

    return translate


def hugging_face(model, tokenizer, precision, beam, batch) -> Callable:
    from machine_translation.exporting.hf_model import to_transformers

    reference = to_transformers(model)
    if precision == "bf16":
        reference = reference.to(torch.bfloat16)
    # fairseq's stopping rule, as ours: a sentence ends once `beam` hypotheses did.
    settings = {"num_beams": beam, "do_sample": False, "length_penalty": 1.0}
    if beam > 1:
        settings["early_stopping"] = True

    @torch.inference_mode()
    def translate(source_ids):
        order = sorted(range(len(source_ids)), key=lambda i: len(source_ids[i]))
        outputs: list[list[int]] = [[] for _ in source_ids]
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            padded = collate(
                [source_ids[i] for i in rows], [[]] * len(rows), pad_id=0, bos_id=1,
                eos_id=2,
            )  # fmt: skip
            longest = padded.source_ids.size(1)
            generated = reference.generate(
                input_ids=padded.source_ids,
                attention_mask=padded.source_mask.long(),
                max_new_tokens=int(MAX_LENGTH_A * longest + MAX_LENGTH_B),
                **settings,
            )
            for row, tokens in zip(rows, generated.tolist(), strict=True):
                outputs[row] = tokens  # (decoding drops <s>, EOS and padding)
        return tokenizer.decode_batch(outputs)

    return translate


def ctranslate2_reference(tokenizer, translator, beam, batch) -> Callable:
    """CTranslate2 reads and writes token strings: ``tokens`` converts (the
    exported ``transformers`` tokenizer, which the exported model ships)."""
    from machine_translation.exporting.hf_tokenizer import to_transformers_tokenizer

    tokens = to_transformers_tokenizer(tokenizer, max_length=10**6)

    def translate(source_ids):
        longest = max(len(ids) for ids in source_ids)
        results = translator.translate_batch(
            [tokens.convert_ids_to_tokens(ids) for ids in source_ids],
            beam_size=beam,
            max_batch_size=batch,
            length_penalty=1.0,
            max_decoding_length=int(MAX_LENGTH_A * longest + MAX_LENGTH_B),
        )
        return tokenizer.decode_batch(
            [tokens.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
        )

    return translate


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def build_settings(args, model, tokenizer, workdir: Path) -> list[Setting]:
    settings = []
    searches = [("greedy", 1), ("beam 5", 5)]
    if "ours" in args.systems:
        for (search, beam), batch, precision in (
            (s, b, p) for s in searches for b in (64, 1) for p in args.precisions
        ):
            translate = ours(model, tokenizer, precision, beam, batch, args.workers)
            threads = max(1, args.threads // args.workers)  # the workers share them
            setting = Setting("ours", search, batch, precision, translate, threads)
            settings.append(setting)
        if args.compiled:  # one process, then `workers` processes
            folder = workdir / "compiled"  # built by the first round
            for (search, beam), batch, workers, compiled in (
                (s, b, w, p)
                for s in searches
                for b in (64, 1)
                for w in sorted({1, args.workers})
                for p in args.compiled_precisions
            ):
                threads = max(1, args.threads // workers)
                translate = ours(
                    model, tokenizer, compiled, beam, batch, workers, folder, threads
                )
                precision = f"{compiled} compiled" + (
                    f", {workers} processes" if workers > 1 else ""
                )
                setting = Setting(
                    "ours", search, batch, precision, translate, args.threads
                )
                setting.warm_up = max(8, 2 * workers * batch)  # every process
                settings.append(setting)
    if "hf" in args.systems:
        if not installed("transformers"):
            print("skipping Hugging Face: pip install transformers (bench only)")
        else:
            for (search, beam), precision in (
                (s, p) for s in searches for p in ("fp32", "bf16")
            ):
                translate = hugging_face(model, tokenizer, precision, beam, 64)
                settings.append(
                    Setting("hugging face", search, 64, precision, translate)
                )
    for system in [s for s in args.systems if s in CT2_COMPUTE]:
        # Its converter reads the Hugging Face model: transformers is needed too.
        if not (installed("ctranslate2") and installed("transformers")):
            print("skipping CTranslate2: pip install -e '.[export]'")
            continue
        import ctranslate2

        # One translator for all settings: each has its own pool of threads, and
        # four idle pools beside the working one cost it a third of its speed.
        compute_type = CT2_COMPUTE[system]
        translator = ctranslate2.Translator(
            str(workdir / "ct2"),  # converted by main(), float32
            device="cpu",
            compute_type=compute_type,  # int8: quantized as it loads
            inter_threads=args.workers,
            intra_threads=max(1, args.threads // args.workers),
        )
        precision = {"float32": "fp32"}.get(compute_type, compute_type)
        for (search, beam), batch in ((s, b) for s in searches for b in (64, 1)):
            translate = ctranslate2_reference(tokenizer, translator, beam, batch)
            setting = Setting("ctranslate2", search, batch, precision, translate)
            settings.append(setting)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch1", type=int, default=100, help="sentences at batch 1")
    parser.add_argument(
        "--sentences", type=int, default=1000, help="sentences at batch 64"
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["ours", "hf", "ct2", "ct2-int8"],
        help="ours hf ct2 ct2-int8",
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16", "int8"], help="ours'"
    )
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="glibc keeps freed blocks"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="batches decoded at once (ours, CT2)"
    )
    parser.add_argument(
        "--compiled", action="store_true", help="ours with the compiled step too"
    )
    parser.add_argument(
        "--compiled-precisions",
        nargs="+",
        choices=["auto", "bf16", "fp32", "int8"],
        default=["auto"],
        help="the compiled programs' (auto: bf16 where native, else fp32)",
    )
    parser.add_argument("--preload", help="a library every process preloads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one system, one round
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.compiled_precisions = [
        p if p == "int8" else resolve_precision(p, torch.device("cpu"))
        for p in args.compiled_precisions
    ]
    if args.worker and args.keep_freed_memory and not keep_freed_memory():
        sys.exit("--keep-freed-memory: the C library is not glibc")
    # CTranslate2 computes on its own threads (intra_threads); PyTorch's pool beside
    # them, once started, halved its speed (greedy 101-137 against 257-279
    # sentences/s), so its process keeps PyTorch to one thread from the start.
    torch.set_num_threads(1 if args.worker in CT2_COMPUTE else args.threads)
    args.checkpoint = str(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    model, tokenizer, _ = load_translation_model(Path(args.checkpoint), "cpu")
    test_set = builtin_test_set("multi30k")
    source_ids = tokenizer.encode_batch(test_set.sources)
    if args.worker:
        args.systems = [args.worker]
        run_one_round(args, model, tokenizer, source_ids, Path(args.workdir))
        return
    print(f"checkpoint: {args.checkpoint}")
    print(f"torch {torch.__version__}, threads {args.threads}, {args.repeats} rounds")
    if args.preload:
        if not Path(args.preload).is_file():
            sys.exit(f"--preload {args.preload}: no such file")
        print(f"preloaded in every process: {args.preload}")
    if args.keep_freed_memory:
        print("every process keeps freed memory (glibc's mallopt)")
    if args.compiled:
        print(
            "ours also with the compiled programs "
            f"({', '.join(args.compiled_precisions)})"
        )
    if args.workers > 1:
        print(f"ours and CTranslate2 decode {args.workers} batches at once")
    settings: dict[tuple, Setting] = {}
    with tempfile.TemporaryDirectory() as workdir:
        if set(CT2_COMPUTE) & set(args.systems) and installed("ctranslate2"):
            from machine_translation.exporting.ctranslate2_model import (
                save_ctranslate2,
            )

            save_ctranslate2(model, tokenizer, Path(workdir) / "ct2", "float32")
        for round_ in range(args.repeats):
            for system in args.systems:
                for result in run_worker(args, system, Path(workdir)):
                    key = tuple(result[k] for k in ("system", "search", "batch"))
                    key += (result["precision"],)
                    setting = settings.setdefault(key, Setting(*key, None))
                    setting.seconds.append(result["seconds"])
                    setting.texts = result["texts"]
            print(f"round {round_ + 1} of {args.repeats} done", flush=True)
    report(list(settings.values()), tokenizer, test_set.references)


def run_worker(args, system: str, workdir: Path) -> list[dict]:
    """Runs one round of ``system``'s settings in a fresh process; its results."""
    command = [sys.executable, __file__, "--worker", system, "--workdir", str(workdir)]
    command += ["--checkpoint", args.checkpoint, "--threads", str(args.threads)]
    command += ["--batch1", str(args.batch1), "--workers", str(args.workers)]
    command += ["--sentences", str(args.sentences)]
    command += ["--precisions", *args.precisions]
    if args.keep_freed_memory:
        command.append("--keep-freed-memory")
    if args.compiled:
        command += ["--compiled", "--compiled-precisions", *args.compiled_precisions]
    environment = dict(os.environ)
    if args.preload:
        environment["LD_PRELOAD"] = args.preload
    subprocess.run(command, check=True, env=environment)
    return json.loads((workdir / f"{system}.json").read_text())


def run_one_round(args, model, tokenizer, source_ids, workdir: Path) -> None:
    """The worker: warms up, times each setting once, writes ``<system>.json``."""
    settings = build_settings(args, model, tokenizer, workdir)
    for setting in settings:  # warm-up: first calls allocate and pick kernels
        torch.set_num_threads(setting.threads or torch.get_num_threads())
        setting.translate(source_ids[: setting.warm_up])
    results = []
    for setting in settings:
        torch.set_num_threads(setting.threads or torch.get_num_threads())
        count = args.sentences if setting.batch > 1 else args.batch1
        start = time.perf_counter()
        texts = setting.translate(source_ids[:count])
        seconds = time.perf_counter() - start
        results.append(
            {
                "system": setting.system,
                "search": setting.search,
                "batch": setting.batch,
                "precision": setting.precision,
                "seconds": seconds,
                "texts": texts,
            }
        )
    for decoder in DECODERS:  # worker processes end here
        decoder.close()
    (workdir / f"{args.worker}.json").write_text(json.dumps(results))


def report(settings: list[Setting], tokenizer, references) -> None:
    print()
    print(
        "| system | search | batch | precision | sentences/s | target tokens/s "
        "| BLEU | sentences/s of each run |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
    speed = {}
    for s in settings:
        count = len(s.texts)
        seconds = statistics.median(s.seconds)
        tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(s.texts))
        bleu = score(s.texts, references[:count]).bleu
        runs = ", ".join(f"{count / t:.1f}" for t in s.seconds)
        speed[s.system, s.search, s.batch, s.precision] = count / seconds
        print(
            f"| {s.system} | {s.search} | {s.batch} | {s.precision} "
            f"| {count / seconds:,.1f} | {tokens / seconds:,.0f} | {bleu:.2f} "
            f"| {runs} |"
        )
    print()
    for search in ("greedy", "beam 5"):
        for batch in (64, 1):
            best = max(
                ((v, p) for (system, se, b, p), v in speed.items()
                if system == "ours" and se == search and b == batch),
                default=None,
            )  # fmt: skip
            if best is None:
                continue
            for system in ("hugging face", "ctranslate2"):
                for (other, se, b, p), value in speed.items():
                    if (other, se, b) == (system, search, batch):
                        print(
                            f"{search}, batch {batch}: ours ({best[1]}) / {system} "
                            f"({p}) = {best[0] / value:.2f}"
                        )


if __name__ == "__main__":
    main()
