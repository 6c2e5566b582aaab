"""The training loop end to end, on a slice of the shipped Multi30K data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import PROJECT_ROOT, compose_config

from machine_translation.checkpoints.files import load_checkpoint
from machine_translation.training.recipes import train


def records(run_dir: Path, kind: str) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as file:
        rows = [json.loads(line) for line in file]
    return [row for row in rows if row["kind"] == kind]


def run_cli(
    *arguments: str, timeout: int = 300, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machine_translation.train", *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def test_short_run_lowers_validation_loss_and_writes_the_run(tmp_path):
    run_dir = train(compose_config(tmp_path))
    valid = records(run_dir, "valid")
    assert [row["step"] for row in valid] == [30, 60]
    # ln(400) ≈ 6.0 at the start (uniform over the vocabulary)
    assert valid[1]["loss"] < valid[0]["loss"] < 5.5
    assert valid[1]["loss"] < 5.0
    assert {"loss", "perplexity", "bleu"} <= set(valid[1])
    for name in ("config.yaml", "tokenizer.json", "train.log", "curves.png"):
        assert (run_dir / name).is_file(), name
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert "training" not in best  # inference checkpoint
    assert {"model_config", "tokenizer", "model"} <= set(best)
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["training"]["state"]["step"] == 60


def test_a_run_bounded_by_minutes_ends_annealed(tmp_path):
    minutes = 0.25
    settings = [
        "schedule=cosine",
        "schedule.horizon=minutes",
        "schedule.warmup_steps=5",
    ]
    config = compose_config(
        tmp_path, *settings, f"trainer.max_minutes={minutes}", "trainer.max_steps=10000"
    )
    run_dir = train(config)
    rows = records(run_dir, "train")
    peak, floor = config.optim.lr, config.optim.lr * config.schedule.min_lr_ratio
    rates = [row["lr"] for row in rows]
    assert max(rates) == pytest.approx(peak, rel=0.05)  # warm-up reached the peak
    assert rows[-1]["elapsed_seconds"] >= 60 * minutes  # the clock ended the run...
    # ...with the rate near its floor (the rate is set from the clock one step late,
    # and a loaded machine makes steps long); counted in steps it would be the peak
    assert rates[-1] < floor + 0.25 * (peak - floor)
    assert rows[-1]["step"] < 10000


def test_only_the_newest_step_checkpoints_are_kept(tmp_path):
    settings = ["trainer.max_steps=16", "trainer.eval_every=4"]
    run_dir = train(compose_config(tmp_path, *settings, "trainer.keep_checkpoints=2"))
    # Validations at steps 4, 8, 12 and 16 each wrote one; the two newest remain.
    files = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert files == ["best.pt", "last.pt", "step-0000012.pt", "step-0000016.pt"]
    newest = load_checkpoint(run_dir / "checkpoints" / "step-0000016.pt")
    assert "training" not in newest and newest["step"] == 16
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, newest["model"][name]), name


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    # 4096-token batches make 26 per epoch: the resumed part crosses an epoch end,
    # where another share of the pairs comes typed casually (data.augment).
    common = [
        "data.max_tokens=4096",
        "trainer.eval_every=15",
        "data.augment.fraction=0.5",
    ]
    whole = train(compose_config(tmp_path / "a", *common, "trainer.max_steps=30"))
    first = train(compose_config(tmp_path / "b", *common, "trainer.max_steps=15"))
    resumed = train(
        compose_config(tmp_path / "b", *common, "trainer.max_steps=30", "resume=true")
    )
    assert resumed == first
    losses = {row["step"]: row["loss"] for row in records(whole, "train")}
    resumed_losses = {row["step"]: row["loss"] for row in records(resumed, "train")}
    assert sorted(resumed_losses) == list(range(1, 31))
    assert [resumed_losses[s] for s in range(16, 31)] == [
        losses[s] for s in range(16, 31)
    ]
    plain = train(
        compose_config(
            tmp_path / "c",
            *common[:2],
            "data.augment.fraction=0",
            "trainer.max_steps=2",
        )
    )
    plain_losses = {row["step"]: row["loss"] for row in records(plain, "train")}
    assert plain_losses[1] != losses[1]  # the augmented stream is another stream
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["training"]["state"]["epoch"] == b["training"]["state"]["epoch"] >= 1
    assert a["training"]["sampler"] == b["training"]["sampler"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "machine_translation.train",
            "+experiment=smoke",
            f"runs_dir={tmp_path}",
            "trainer.max_steps=100000",
            "trainer.eval_every=100000",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    metrics = None
    while time.time() < deadline and process.poll() is None:
        found = list(tmp_path.glob("smoke/*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            metrics = found[0]
            break
        time.sleep(0.2)
    assert metrics is not None, "training did not start"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "SIGINT received" in stderr
    checkpoint = load_checkpoint(metrics.parent / "checkpoints" / "last.pt")
    assert checkpoint["training"]["state"]["step"] >= 3
    # Saved at once, without a validation first (a scheduler's grace is short).
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert not [row for row in rows if row["kind"] == "valid"]


def test_resume_removes_the_temporary_files_of_a_killed_save(tmp_path):
    run = train(compose_config(tmp_path, "trainer.max_steps=2"))
    stale = run / "checkpoints" / ".last.pt.999999999.tmp"  # no such process
    stale.write_bytes(b"half a checkpoint")
    train(compose_config(tmp_path, "trainer.max_steps=3", "resume=true"))
    assert not stale.exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_step=5", "max_step"),
        ("optim.lr=fast", "optim.lr"),
        (
            "+model.d_modle=64",
            "unknown model config key 'd_modle' (did you mean 'd_model'?)",
        ),
        ("model.n_heads=5", "d_model=64 is not divisible by n_heads=5"),
        ("trainer.eval_every=0", "trainer.eval_every=0: must be at least 1"),
        ("trainer.grad_accum=0", "trainer.grad_accum=0: must be at least 1"),
        ("optim.lr=-1", "optim.lr=-1.0: must be at least"),
        ("data.max_tokens=0", "data.max_tokens=0: must be at least 1"),
        ("decoding.beam_size=0", "decoding.beam_size=0: must be at least 1"),
        ("data.augment.fraction=2", "data.augment.fraction=2.0: must be in [0, 1]"),
        ("data.max_source_length=1", "no training pairs left"),
        ("schedule.horizon=hours", "schedule.horizon='hours' is not one of"),
        ("schedule.horizon=minutes", "schedule.horizon=minutes needs trainer.max"),
    ],
)
def test_config_mistakes_fail_naming_the_field(tmp_path, override, expected):
    result = run_cli("+experiment=smoke", f"runs_dir={tmp_path}", override, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_diverging_loss_stops_with_a_clear_message(tmp_path):
    result = run_cli(
        "+experiment=smoke",
        f"runs_dir={tmp_path}",
        "optim.lr=1e12",
        "optim.clip_norm=0",
        "schedule.warmup_steps=1",
        "trainer.eval_every=1",
        "trainer.max_steps=40",
        "data.valid_bleu_sentences=2",
    )
    assert result.returncode == 2, result.stderr
    assert "error: the loss became" in result.stderr
    (last,) = tmp_path.glob("smoke/*/checkpoints/last.pt")
    assert load_checkpoint(last)["training"]["state"]["step"] >= 1


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    common = [
        "+experiment=smoke",
        "trainer.max_steps=3",
        "trainer.eval_every=3",
        "model.dropout=0.0",
        "data.valid_bleu_sentences=4",
    ]
    single = run_cli(*common, f"runs_dir={tmp_path / 'one'}", "trainer.grad_accum=2")
    assert single.returncode == 0, single.stderr
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    distributed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "machine_translation.train",
            *common,
            f"runs_dir={tmp_path / 'two'}",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert distributed.returncode == 0, distributed.stderr
    assert "(2 processes)" in distributed.stderr
    (one,) = tmp_path.glob("one/smoke/*/checkpoints/last.pt")
    (two,) = tmp_path.glob("two/smoke/*/checkpoints/last.pt")
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a["tokenizer"] == b["tokenizer"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, atol=2e-5, rtol=1e-4)
    before = torch.load(one, weights_only=True)  # training really moved the weights
    assert before["training"]["state"]["step"] == 3


@pytest.mark.slow  # up to 400 steps
def test_early_stopping_ends_the_run_and_best_is_the_best_step(tmp_path):
    """The smoke model's BLEU on 20 sentences stalls early: patience 2 stops it."""
    run = train(
        compose_config(
            tmp_path,
            "trainer.max_steps=400",
            "trainer.eval_every=10",
            "trainer.patience=2",
        )
    )
    valid = records(run, "valid")
    assert valid[-1]["step"] < 400  # stopped by patience, not by max_steps
    scores = [row["bleu"] for row in valid]
    best_index = scores.index(max(scores))  # the first of equal scores counts
    assert len(valid) - 1 - best_index == 2  # two validations without a gain
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == valid[best_index]["step"]
    assert "no better bleu in 2 validations" in (run / "train.log").read_text()


@pytest.mark.parametrize("after", [1.0, 4.0])  # importing torch; setting up the run
def test_ctrl_c_during_start_up_is_one_line(tmp_path, after):
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "machine_translation.train", "+experiment=smoke"),
            *(f"runs_dir={tmp_path}", "trainer.max_steps=100000"),
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    # Early enough, it stops before training (130, or ended by the signal itself);
    # later, training saves and ends (0).
    assert process.returncode in (0, 130, -signal.SIGINT), stderr
