"""The encoder and decoding steps compiled ahead of time decode as the eager model."""

import copy
import multiprocessing
import re
import shutil

import pytest
import torch
from helpers import run_translate

from encoder_transformer.config import TransformerConfig
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.scoring import score
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference import fast
from machine_translation.inference.batch_translation import search_batch
from machine_translation.inference.beam_choice import choose_beams, special_tokens
from machine_translation.inference.beam_search import beam_search
from machine_translation.inference.decoders import InProcess
from machine_translation.inference.fast.compiled_model import CompiledModel
from machine_translation.inference.fast.int8_programs import has_torchao
from machine_translation.inference.fast.packages import compiled_package, package_path
from machine_translation.inference.fast.programs import (
    FEW_ROWS,
    encoder_lengths,
    encoder_programs,
    programs,
)
from machine_translation.inference.greedy_choice import greedy_tokens
from machine_translation.inference.greedy_search import greedy_search
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.devices import cpu_has_avx2, for_inference

PAD, BOS, EOS = 0, 1, 2
pytestmark = [
    pytest.mark.slow,  # compiling the programs takes minutes on 2 cores
    pytest.mark.skipif(
        not (shutil.which("g++") or shutil.which("c++")),
        reason="compiling programs needs a C++ compiler (g++)",
    ),
    # AOTInductor's loader uses a deprecated TorchScript decorator (not our code).
    pytest.mark.filterwarnings("ignore:.*script_method:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def tiny_model_and_packages(tmp_path_factory):
    """A tiny random fp32 model (GQA) and its compiled programs for greedy search
    and beam size 3, each step for many rows and for few (~15-30 s each to
    compile)."""
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=37,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        max_positions=64,
    )
    model = Seq2SeqTransformer(config).eval()
    with torch.no_grad():  # EOS likelier, so that sentences end at different steps
        model.decoder.embedding.tokens.weight[EOS] += 0.5
    folder = tmp_path_factory.mktemp("compiled")
    packages = {
        program: compiled_package(model, folder, "fp32", program)
        for program in programs([1, 3])
    }
    return model, packages


def counting(run, counts: dict, name: str):
    """``run``, counting its calls in ``counts[name]``."""
    counts[name] = 0

    def counted(*inputs):
        counts[name] += 1
        return run(*inputs)

    return counted


def eager_and_compiled(model, packages):
    """The model in eager mode, the compiled model, and how often each of its
    programs ran (counted by wrapping the loaded programs of the test's copy)."""
    eager = for_inference(copy.deepcopy(model), "fp32")
    folder = next(iter(packages.values())).parent  # compiled: loaded, not built
    compiled = CompiledModel(copy.deepcopy(model), "fp32", folder, [1, 3])
    counts: dict = {}
    encoder, step = compiled.encoder, compiled.step
    names = {encoder_lengths(model, "fp32", p): p for p in encoder_programs("fp32")}
    encoder.runs = {
        lengths: counting(run, counts, names[lengths])
        for lengths, run in encoder.runs.items()
    }
    step.first_step = counting(step.first_step, counts, "first_step")
    step.one_sentence_first_step = counting(
        step.one_sentence_first_step, counts, "first_step_few"
    )
    step.steps = {g: counting(run, counts, g) for g, run in step.steps.items()}
    step.few_rows_steps = {
        g: counting(run, counts, ("few", g)) for g, run in step.few_rows_steps.items()
    }
    return eager, compiled, counts


def random_sources(count=12, vocabulary=37, longest=14):
    torch.manual_seed(1)
    lengths = torch.randint(2, longest + 1, (count,)).tolist()
    sources = [torch.randint(3, vocabulary, (n,)) for n in lengths]
    batch = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    return batch, batch != PAD


def step_both(eager, compiled, sources, mask, steps=20) -> list:
    """Steps both models through the same random tokens (the caches grow at 16),
    asserting equal logits; returns their caches."""
    tokens = torch.randint(3, 37, (sources.size(0), steps))
    with torch.inference_mode():
        states = eager.encode(sources, mask)
        caches = [eager.new_cache(), compiled.new_cache()]
        for position in range(tokens.size(1)):
            step = tokens[:, position : position + 1]
            expected = eager.decode_step(step, states, mask, caches[0])
            actual = compiled.decode_step(step, states, mask, caches[1])
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    return caches


def test_compiled_step_gives_the_eager_logits(tiny_model_and_packages):
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    caches = step_both(eager, compiled, *random_sources())
    assert counts == {
        "short_encoder": 0, "encoder": 0, "first_step": 1, "first_step_few": 0,
        1: 19, 3: 0, ("few", 1): 0, ("few", 3): 0,
    }  # fmt: skip
    pairs = zip(caches[1].self_attention, caches[0].self_attention, strict=True)
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.read(), theirs.read())


def test_few_rows_steps_give_the_eager_logits_and_search(tiny_model_and_packages):
    """Up to FEW_ROWS rows a step runs the program built for few rows (its own
    products, autotuned); its logits and searches are the eager ones too."""
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    sources, mask = random_sources(count=FEW_ROWS, longest=30)
    step_both(eager, compiled, sources, mask)
    assert counts[("few", 1)] == 19 and counts[1] == 0
    settings = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "beam_size": 3}
    for row in range(FEW_ROWS):  # one sentence at a time: 3 rows
        one, one_mask = sources[row : row + 1], mask[row : row + 1]
        found = [
            beam_search(model, one, one_mask, **settings) for model in (eager, compiled)
        ]
        assert [h.tokens for h in found[1][0]] == [h.tokens for h in found[0][0]]
    assert counts[("few", 3)] > 0 and counts[3] == 0
    # (and the first step of one sentence, its own program too)
    assert counts["first_step_few"] == FEW_ROWS and counts["first_step"] == 1


def test_compiled_encoder_gives_the_eager_states(tiny_model_and_packages):
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    with torch.inference_mode():
        # fp32: up to 16 tokens the attention is written out, beyond it is SDPA's
        for longest, program in ((30, "encoder"), (14, "short_encoder")):
            sources, mask = random_sources(longest=longest)
            expected = eager.encode(sources, mask)
            actual = compiled.encode(sources, mask)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            assert counts[program] == 1


@pytest.mark.parametrize("beam_size", [1, 3])
def test_compiled_search_equals_eager_search(tiny_model_and_packages, beam_size):
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    sources, mask = random_sources(longest=30)
    settings = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD}
    if beam_size == 1:
        expected = greedy_search(eager, sources, mask, **settings)
        actual = greedy_search(compiled, sources, mask, **settings)
    else:
        found = [
            beam_search(model, sources, mask, beam_size=beam_size, nbest=2, **settings)
            for model in (eager, compiled)
        ]
        expected, actual = ([[h.tokens for h in row] for row in f] for f in found)
    best = [row[0] for row in expected] if beam_size > 1 else expected
    assert len({len(tokens) for tokens in best}) > 2  # sentences end at other steps
    assert actual == expected
    assert counts["encoder"] == counts["first_step"] == 1
    assert counts[beam_size] > 0


def assert_same_choice(actual, expected):
    """Two beam choices agree on what the search reads: the scores, and the
    beams and tokens of the candidates that are possible (not -inf)."""
    torch.testing.assert_close(actual.top_scores, expected.top_scores)
    torch.testing.assert_close(actual.scores, expected.scores)
    assert torch.equal(actual.ending, expected.ending)
    assert torch.equal(actual.continuing, expected.continuing)
    possible, alive = (
        expected.top_scores > float("-inf"),
        expected.scores > float("-inf"),
    )
    for name, where in (("beams", possible), ("tokens", possible)):
        assert torch.equal(getattr(actual, name)[where], getattr(expected, name)[where])
    for name in ("parents", "next_tokens"):
        assert torch.equal(getattr(actual, name)[alive], getattr(expected, name)[alive])


@pytest.mark.parametrize("count", [12, 1])  # the many-rows and the few-rows step
def test_compiled_greedy_step_chooses_the_eager_tokens(tiny_model_and_packages, count):
    """Greedy search's later step ends in the program by choosing the next
    tokens: those ``greedy_tokens`` takes from the eager logits, step after step;
    the first step (no package chooses there) leaves it to the search."""
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    sources, mask = random_sources(count=count)
    forbidden = torch.tensor([PAD, BOS])
    with torch.inference_mode():
        states = eager.encode(sources, mask)
        caches = [eager.new_cache(), compiled.new_cache()]
        tokens = torch.full((count, 1), BOS)
        first = compiled.decode_greedy_step(tokens, states, mask, caches[1], forbidden)
        assert first is None and caches[1].length == 0
        for model, cache in zip((eager, compiled), caches, strict=True):
            model.decode_step(tokens, states, mask, cache)
        for _ in range(6):
            logits = eager.decode_step(tokens, states, mask, caches[0])[:, -1]
            expected = greedy_tokens(logits, forbidden)
            actual = compiled.decode_greedy_step(
                tokens, states, mask, caches[1], forbidden
            )
            assert torch.equal(actual, expected)
            tokens = torch.randint(3, 37, (count, 1))  # (any: both caches take it)
    assert counts[("few", 1) if count == 1 else 1] == 6
    pairs = zip(caches[1].self_attention, caches[0].self_attention, strict=True)
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.read(), theirs.read())


def test_inductor_greedy_tokens_break_ties_as_eager():
    """In bf16 logits tie often: the compiled choice (Inductor's reduction, as in
    the greedy step's program) takes the same first maximum as eager ``max``."""
    torch.manual_seed(5)
    logits = (torch.randn(64, 4000) * 4).round().bfloat16()
    forbidden = torch.tensor([PAD, BOS])
    compiled = torch.compile(greedy_tokens, backend="inductor", fullgraph=True)
    assert torch.equal(compiled(logits, forbidden), greedy_tokens(logits, forbidden))


@pytest.mark.parametrize("count", [12, 1])  # the many-rows and the few-rows step
def test_compiled_beam_step_chooses_the_eager_beams(tiny_model_and_packages, count):
    """Beam search's later step ends in the program by choosing the next beams:
    the choice ``choose_beams`` makes from the eager logits, step after step,
    with groups whose token is required (the length limit's EOS, a prefix's)."""
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    sources, mask = random_sources(count=count)
    k, special = 3, special_tokens(EOS, PAD, BOS)
    required = torch.tensor([-1, EOS, 7, -1] * 3)[:count]
    with torch.inference_mode():
        states = eager.encode(sources, mask)
        caches = [eager.new_cache(), compiled.new_cache()]
        first = torch.full((count, 1), BOS)
        for model, cache in zip((eager, compiled), caches, strict=True):
            model.decode_step(first, states, mask, cache)
            cache.reorder_self_attention(torch.arange(count).repeat_interleave(k))
        tokens = torch.randint(3, 37, (count * k, 1))
        scores = -torch.rand(count, k)
        for step in range(6):
            restricted = required if step in (1, 4) else None
            logits = eager.decode_step(tokens, states, mask, caches[0])[:, -1]
            expected = choose_beams(logits, scores, restricted, special, k)
            actual = compiled.decode_beam_step(
                tokens, states, mask, caches[1], scores, restricted, special
            )
            assert_same_choice(actual, expected)
            for cache in caches:
                cache.reorder_self_attention(expected.parents.view(-1))
            tokens = expected.next_tokens.reshape(-1, 1)
            scores = expected.scores.contiguous()
    assert counts[("few", 3) if count == 1 else 3] == 6


def test_compiled_beam_search_with_prefixes_equals_eager(tiny_model_and_packages):
    """Forced prefixes: the prefix's token is required inside the program."""
    eager, compiled, counts = eager_and_compiled(*tiny_model_and_packages)
    sources, mask = random_sources(longest=30)
    prefixes = [[11, 12, 13], [], [5]] * 4
    settings = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "nbest": 3}
    found = [
        beam_search(model, sources, mask, beam_size=3, prefixes=prefixes, **settings)
        for model in (eager, compiled)
    ]
    expected, actual = ([[h.tokens for h in row] for row in f] for f in found)
    assert actual == expected
    assert all(hypothesis[:3] == [11, 12, 13] for hypothesis in expected[0])
    assert counts[3] > 0


def test_worker_processes_decode_as_this_process(tiny_model_and_packages):
    model, packages = tiny_model_and_packages
    _, compiled, counts = eager_and_compiled(model, packages)
    folder = next(iter(packages.values())).parent
    sources, mask = random_sources(longest=30)
    batches = [row[keep].tolist() for row, keep in zip(sources, mask, strict=True)]
    batches = [batches[:5], batches[5:]]
    # Each worker process takes this process's thread count: the same sums.
    children = len(multiprocessing.active_children())
    with fast.prepare(model, "fp32", folder, [1, 3], workers=2) as workers:
        workers.wait_until_loaded(timeout=300)
        workers.wait_until_loaded(timeout=0)  # still loaded
        assert len(multiprocessing.active_children()) == children + 2
        for beam_size in (1, 3):
            options = {
                "special_ids": (PAD, BOS, EOS),
                "device": torch.device("cpu"),
                "precision": "fp32",
                "decoding": DecodingConfig(beam_size=beam_size),
                "nbest": beam_size,
            }
            expected = [search_batch(compiled, batch, **options) for batch in batches]
            assert workers.map(search_batch, batches, **options) == expected
    assert counts[3] > 0  # here too, the compiled programs ran
    with fast.prepare(model, "fp32", folder, [1, 3], workers=1) as here:
        assert isinstance(here, InProcess)  # one worker: no process to start
        assert len(multiprocessing.active_children()) == children


def test_a_package_belongs_to_its_weights_and_program(tiny_model_and_packages):
    model, packages = tiny_model_and_packages
    package = packages["step_beams1"]
    folder = package.parent
    assert package_path(model, folder, "fp32", "step_beams1") == package
    assert package_path(model, folder, "bf16", "step_beams1") != package
    assert len(set(packages.values())) == len(programs([1, 3])) == 8
    assert len(programs([1, 3], "bf16")) == 7  # one encoder: no short one
    # In int8 the few-rows steps are weight-only int8 with bf16 inputs: built where
    # Inductor has vector kernels for them (AVX2 or AVX-512).
    assert len(programs([1, 3], "int8")) == (7 if cpu_has_avx2() else 5)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decoder.blocks[0].feedforward_norm.weight[0] += 1e-3
    assert package_path(changed, folder, "fp32", "step_beams1") != package


@pytest.mark.skipif(
    not (has_torchao() and cpu_has_avx2()),
    reason="the int8 few-rows step needs torchao and a CPU with AVX2 or AVX-512",
)
def test_int8_few_rows_step_is_close_to_the_fp32_step(tiny_model_and_packages):
    """The int8 few-rows step (int8 weights, bf16 inputs) gives the fp32 step's
    logits and writes its keys and values, to int8's and bf16's rounding."""
    model, packages = tiny_model_and_packages
    folder = next(iter(packages.values())).parent
    int8 = compiled_package(model, folder, "int8", "step_beams1_few")
    runs = [
        torch._inductor.aoti_load_package(str(p))
        for p in (packages["step_beams1_few"], int8)
    ]
    torch.manual_seed(2)
    rows, layers, heads, width = FEW_ROWS, 2, 2, 8
    own = [torch.randn(rows, heads, 16, width) for _ in range(2 * layers)]
    cross = [torch.randn(rows, heads, 13, width) for _ in range(2 * layers)]
    tokens = torch.randint(3, 37, (rows, 1))
    mask = torch.rand(rows, 13) < 0.8
    mask[:, 0] = True  # every sentence has a token
    buffers = [[b.clone() for b in own + cross] for _ in runs]
    forbidden = torch.tensor([PAD, BOS])
    logits = [
        run(tokens, mask, torch.empty(()).expand(9), tuple(b), forbidden)[0]
        for run, b in zip(runs, buffers, strict=True)
    ]
    assert logits[1].dtype == torch.bfloat16  # its inputs are bf16, not quantized
    torch.testing.assert_close(logits[1].float(), logits[0], rtol=0, atol=0.05)
    assert (logits[1].argmax(-1) == logits[0].argmax(-1)).all()
    for written, expected in zip(buffers[1], buffers[0], strict=True):
        torch.testing.assert_close(written, expected, rtol=0, atol=0.05)
    assert not torch.equal(buffers[1][0], own[0])  # position 9 was written


def test_translate_compiled_builds_once_then_reuses(smoke_run, tmp_path):
    checkpoint = tmp_path / "best.pt"  # the package goes beside it
    shutil.copy(smoke_run / "checkpoints" / "best.pt", checkpoint)
    arguments = ["--checkpoint", str(checkpoint), "--compiled", "--beam", "1"]
    first = run_translate(*arguments, "A dog runs.", "Two men sit on a bench.")
    assert first.returncode == 0, first.stderr
    assert "compiling step_beams1 once" in first.stderr
    assert len(first.stdout.splitlines()) == 2
    folder = checkpoint.parent / "compiled"
    built = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    # One package per program, named <program>_<precision>_<fingerprint>.pt2.
    named = [re.fullmatch(r"(.+)_(bf16|fp32)_[0-9a-f]{16}\.pt2", n) for n in built]
    assert all(named), sorted(built)
    precision = named[0].group(2)  # auto: bf16 where the CPU multiplies it
    assert sorted(match.group(1) for match in named) == sorted(programs([1], precision))
    again = run_translate(*arguments, "A dog runs.", "Two men sit on a bench.")
    assert again.returncode == 0, again.stderr
    assert "compiling" not in again.stderr
    assert again.stdout == first.stdout
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == built
    refused = run_translate(*arguments, "--device", "cuda", "A dog.")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    # Two worker processes, one sentence per batch: the same lines, in order.
    lines = "A dog runs.\n\nTwo men sit on a bench.\nA girl.\nThe red car.\n"
    one = run_translate(*arguments, "--batch-size", "1", stdin=lines)
    two = run_translate(*arguments, "--batch-size", "1", "--workers", "2", stdin=lines)
    assert one.returncode == two.returncode == 0, two.stderr
    assert "compiling" not in two.stderr
    assert two.stdout == one.stdout and len(one.stdout.splitlines()) == 5


@pytest.mark.skipif(not has_torchao(), reason="int8 programs need torchao")
def test_int8_programs_multiply_in_int8_and_translate_close_to_fp32(
    smoke_run, tmp_path
):
    """``--compiled --precision int8``: the packages hold oneDNN's int8 linear
    layers (and, on CPUs with AVX2 or AVX-512, the few-rows step weight-only
    int8 products), and the translations are close to fp32's, in batches and one
    sentence at a time (int8 rounds, so not equal: the threshold is that of the
    eager int8 path, ``test_int8.MIN_BLEU``)."""
    checkpoint = tmp_path / "best.pt"
    shutil.copy(smoke_run / "checkpoints" / "best.pt", checkpoint)
    lines = "\n".join(builtin_test_set("multi30k").sources[:24]) + "\n"
    greedy = ["--checkpoint", str(checkpoint), "--beam", "1"]
    fp32 = run_translate(*greedy, "--precision", "fp32", stdin=lines)
    int8 = run_translate(*greedy, "--compiled", "--precision", "int8", stdin=lines)
    assert fp32.returncode == int8.returncode == 0, int8.stderr
    built = {
        p.name.split("_int8_")[0]: p for p in (checkpoint.parent / "compiled").iterdir()
    }
    assert sorted(built) == sorted(programs([1], "int8"))
    assert b"qlinear" in built["step_beams1"].read_bytes()  # oneDNN's int8 linear
    one_at_a_time = run_translate(
        *greedy, "--compiled", "--precision", "int8", "--batch-size", "1", stdin=lines
    )
    assert one_at_a_time.returncode == 0, one_at_a_time.stderr
    assert "compiling" not in one_at_a_time.stderr
    for outputs in (int8.stdout.splitlines(), one_at_a_time.stdout.splitlines()):
        assert len(outputs) == 24
        assert score(outputs, [fp32.stdout.splitlines()]).bleu >= 80.0
