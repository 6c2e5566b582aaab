"""The decoding step compiled ahead of time decodes as the eager model does."""

import copy
import shutil

import pytest
import torch
from test_translate import run_translate

from encoder_transformer.config import TransformerConfig
from machine_translation.compiled_step import (
    CompiledStep,
    compiled_step_package,
    package_path,
)
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime import for_inference
from machine_translation.search import beam_search, greedy_search

PAD, BOS, EOS = 0, 1, 2
# AOTInductor's loader uses a deprecated TorchScript decorator (not our code).
pytestmark = pytest.mark.filterwarnings("ignore:.*script_method:DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_model_and_package(tmp_path_factory):
    """A tiny random fp32 model (GQA) and its compiled steps for greedy search and
    beam size 3 (~20 s each to compile)."""
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
        beams: compiled_step_package(model, folder, "fp32", beams) for beams in (1, 3)
    }
    return model, packages


def eager_and_compiled(model, packages):
    """The model in eager mode and with compiled steps that count their runs."""
    eager = for_inference(copy.deepcopy(model), "fp32")
    compiled = for_inference(copy.deepcopy(model), "fp32")
    step = CompiledStep(packages, compiled.decode_step)
    step.counts = dict.fromkeys(step.runs, 0)

    def counting(beams, run):
        def counted(*inputs):
            step.counts[beams] += 1
            return run(*inputs)

        return counted

    step.runs = {beams: counting(beams, run) for beams, run in step.runs.items()}
    compiled.decode_step = step
    return eager, compiled


def random_sources(count=12, vocabulary=37):
    torch.manual_seed(1)
    lengths = torch.randint(2, 15, (count,)).tolist()
    sources = [torch.randint(3, vocabulary, (n,)) for n in lengths]
    batch = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    return batch, batch != PAD


def test_compiled_step_gives_the_eager_logits(tiny_model_and_package):
    eager, compiled = eager_and_compiled(*tiny_model_and_package)
    sources, mask = random_sources()
    tokens = torch.randint(3, 37, (sources.size(0), 20))  # the caches grow at 16
    with torch.inference_mode():
        states = eager.encode(sources, mask)
        caches = [eager.new_cache(), compiled.new_cache()]
        for position in range(tokens.size(1)):
            step = tokens[:, position : position + 1]
            expected = eager.decode_step(step, states, mask, caches[0])
            actual = compiled.decode_step(step, states, mask, caches[1])
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
        assert compiled.decode_step.counts == {1: 19, 3: 0}  # all but the first
        pairs = zip(caches[1].self_attention, caches[0].self_attention, strict=True)
        for ours, theirs in pairs:
            torch.testing.assert_close(ours.read(), theirs.read())


@pytest.mark.parametrize("beam_size", [1, 3])
def test_compiled_search_equals_eager_search(tiny_model_and_package, beam_size):
    eager, compiled = eager_and_compiled(*tiny_model_and_package)
    sources, mask = random_sources()
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
    assert compiled.decode_step.counts[beam_size] > 0


def test_a_package_belongs_to_its_weights_and_search(tiny_model_and_package):
    model, packages = tiny_model_and_package
    package = packages[1]
    assert package_path(model, package.parent, "fp32") == package
    assert package_path(model, package.parent, "bf16") != package
    assert package_path(model, package.parent, "fp32", beams=3) == packages[3]
    assert packages[3] != package
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decoder.blocks[0].feedforward_norm.weight[0] += 1e-3
    assert package_path(changed, package.parent, "fp32") != package


def test_translate_compiled_builds_once_then_reuses(smoke_run, tmp_path):
    checkpoint = tmp_path / "best.pt"  # the package goes beside it
    shutil.copy(smoke_run / "checkpoints" / "best.pt", checkpoint)
    arguments = ["--checkpoint", str(checkpoint), "--compiled", "--beam", "1"]
    first = run_translate(*arguments, "A dog runs.", "Two men sit on a bench.")
    assert first.returncode == 0, first.stderr
    assert "compiling the decoding step for greedy search" in first.stderr
    assert len(first.stdout.splitlines()) == 2
    assert list((checkpoint.parent / "compiled").glob("decoding_step_*.pt2"))
    again = run_translate(*arguments, "A dog runs.", "Two men sit on a bench.")
    assert again.returncode == 0, again.stderr
    assert "compiling" not in again.stderr
    assert again.stdout == first.stdout
    for wrong in (["--device", "cuda"], ["--workers", "2"]):
        refused = run_translate(*arguments, *wrong, "A dog.")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
