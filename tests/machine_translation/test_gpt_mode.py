"""The GPT mode end to end: training on text, generation, the sample command line."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import PROJECT_ROOT, VERSE, compose_gpt_config

from decoder_transformer.gpt import GPT
from machine_translation.checkpoints.files import load_checkpoint
from machine_translation.checkpoints.loading import load_language_model
from machine_translation.inference.generation import generate
from machine_translation.inference.sampling import Sampling, sample_next_tokens
from machine_translation.training.recipes import train


@pytest.fixture(scope="module")
def verse_model(verse_run):
    model, tokenizer, _ = load_language_model(verse_run / "checkpoints" / "best.pt")
    return model, tokenizer


def run_sample(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "machine_translation.sample", *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_tiny_gpt_learns_a_text_and_regenerates_it_greedily(verse_run, verse_model):
    model, tokenizer = verse_model
    best = load_checkpoint(verse_run / "checkpoints" / "best.pt")
    assert best["task"] == "gpt"
    assert best["score"]["nats_per_char"] < 0.05
    prompt = tokenizer.encode("To be")
    continuation = generate(model, prompt, 60, Sampling(temperature=0))[0]
    # Longer than the 32-token window: the cache is refilled on the way.
    assert tokenizer.decode(prompt + continuation) == (VERSE * 2)[:65]


def test_temperature_near_zero_and_top_k_1_are_greedy(verse_model):
    model, tokenizer = verse_model
    prompt = tokenizer.encode("or not")
    greedy = generate(model, prompt, 40, Sampling(temperature=0))
    for sampling in (Sampling(temperature=1e-4), Sampling(temperature=1.5, top_k=1)):
        generator = torch.Generator().manual_seed(0)
        assert generate(model, prompt, 40, sampling, generator=generator) == greedy


def uncached_samples(model, prompt, count, sampling, seed):
    """The reference: the whole sequence re-read at every step, no cache."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(count):
            logits = model(tokens)[:, -1].float()
            chosen = sample_next_tokens(logits, sampling, generator)
            tokens = torch.cat([tokens, chosen.unsqueeze(1)], dim=1)
    return tokens[0, len(prompt) :].tolist()


BLOCK_OPTIONS = [
    {"positions": "learned", "norm": "layernorm", "activation": "gelu"},
    {"positions": "rope", "norm": "rmsnorm", "activation": "swiglu", "n_kv_heads": 2},
    {"positions": "sinusoidal", "n_kv_heads": 1, "norm_placement": "post"},
]


@pytest.mark.parametrize("options", BLOCK_OPTIONS)
def test_cached_sampling_equals_uncached_with_the_same_seed(tiny_config, options):
    model = GPT(tiny_config(max_positions=48, **options)).eval()
    prompt = [5, 9, 2, 7]
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.95)
    generator = torch.Generator().manual_seed(3)
    cached = generate(model, prompt, 40, sampling, generator=generator)[0]
    assert cached == uncached_samples(model, prompt, 40, sampling, seed=3)


def test_samples_are_reproducible_and_independent(verse_model):
    model, tokenizer = verse_model
    prompt = tokenizer.encode("T")

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        sampling = Sampling(temperature=3.0)  # flat enough to differ
        return generate(model, prompt, 30, sampling, num_samples=3, generator=generator)

    first, again = draw(1), draw(1)
    assert first == again
    assert len({tuple(sample) for sample in first}) == 3
    assert first != draw(2)


def test_bad_generation_arguments_fail_clearly(verse_model):
    model, _ = verse_model
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], 5, Sampling())
    with pytest.raises(ValueError, match="num_samples"):
        generate(model, [5], 5, Sampling(), num_samples=0)


def test_the_gpt_mode_trains_with_bpe_and_reports_nats_per_char(tmp_path):
    text = "".join(f"Line {i}: to be or not to be.\n" for i in range(300))
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    config = compose_gpt_config(
        tmp_path / "runs",
        f"data.path={tmp_path / 'text.txt'}",
        "data.tokenizer=bpe",
        "data.vocab_size=300",
        "trainer.max_steps=40",
        "trainer.eval_every=20",
    )
    run = train(config)
    records = (run / "metrics.jsonl").read_text().splitlines()
    valid = [r for r in map(json.loads, records) if r["kind"] == "valid"]
    assert valid[-1]["loss"] < valid[0]["loss"]
    # A BPE token covers several characters: the loss per character is smaller.
    assert valid[-1]["nats_per_char"] < valid[-1]["loss"]
    model, tokenizer, _ = load_language_model(run / "checkpoints" / "best.pt")
    assert tokenizer.vocab_size == model.config.vocab_size <= 300


def test_a_gpt_config_typo_names_the_field(tmp_path):
    with pytest.raises(Exception, match="blok_size"):
        compose_gpt_config(tmp_path, "data.blok_size=3")


def test_sample_command_line(verse_run):
    checkpoint = str(verse_run / "checkpoints" / "best.pt")
    result = run_sample(
        "--checkpoint", checkpoint, "--prompt", "To be", "--max-new-tokens", "40",
        "--seed", "4", "--num-samples", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("\n---------------\n")
    assert len(samples) == 2 and all(s.startswith("To be") for s in samples)
    again = run_sample(
        "--checkpoint", checkpoint, "--prompt", "To be", "--max-new-tokens", "40",
        "--seed", "4", "--num-samples", "2",
    )  # fmt: skip
    assert again.stdout == result.stdout


def test_sample_errors_are_one_line_with_exit_code_2(verse_run, tmp_path):
    checkpoint = str(verse_run / "checkpoints" / "best.pt")
    unseen = run_sample("--checkpoint", checkpoint, "--prompt", "Tö be 🙂")
    assert unseen.returncode == 2
    assert unseen.stderr.count("\n") == 1 and "'ö', '🙂'" in unseen.stderr
    missing = run_sample("--runs-dir", str(tmp_path))
    assert missing.returncode == 2 and "--config-name gpt" in missing.stderr
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    broken = run_sample("--checkpoint", str(corrupt))
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1


def test_a_resumed_gpt_run_continues_exactly(tmp_path):
    text = VERSE * 40 + "".join(f"Line {i}.\n" for i in range(200))
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    common = [f"data.path={tmp_path / 'text.txt'}", "trainer.eval_every=12",
              "trainer.log_every=1", "model.dropout=0.1"]  # fmt: skip
    whole = train(compose_gpt_config(tmp_path / "a", *common, "trainer.max_steps=24"))
    train(compose_gpt_config(tmp_path / "b", *common, "trainer.max_steps=12"))
    resumed = train(
        compose_gpt_config(
            tmp_path / "b", *common, "trainer.max_steps=24", "resume=true"
        )
    )

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}

    expected, got = losses(whole), losses(resumed)
    assert [got[s] for s in range(13, 25)] == [expected[s] for s in range(13, 25)]
