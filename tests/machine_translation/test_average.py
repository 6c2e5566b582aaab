"""Checkpoint averaging: the library function and the command line on a tiny run."""

import shutil
import subprocess
import sys

import pytest
import torch
from helpers import PROJECT_ROOT

from machine_translation import average, evaluate
from machine_translation.checkpoints.averaging import average_checkpoints
from machine_translation.checkpoints.files import CheckpointError, save_checkpoint
from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.checkpoints.runs import step_checkpoints
from machine_translation.model import Seq2SeqTransformer

TIED = ("encoder.embedding.tokens.weight", "decoder.embedding.tokens.weight")


def write_checkpoint(path, config, tokenizer="{}", counter=0):
    """A translation checkpoint of a fresh model, plus an integer buffer."""
    weights = Seq2SeqTransformer(config).state_dict()
    weights["counter"] = torch.tensor(counter)
    payload = {
        "task": "translation",
        "model_config": config.to_dict(),
        "tokenizer": tokenizer,
        "model": weights,
        "step": counter,
    }
    save_checkpoint(payload, path)
    return weights


def test_average_of_two_is_the_mean(tiny_config, tmp_path):
    config = tiny_config()
    a = write_checkpoint(tmp_path / "a.pt", config, counter=3)
    b = write_checkpoint(tmp_path / "b.pt", config, counter=5)
    averaged = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    weights = averaged["model"]
    assert list(weights) == list(a)
    for name, tensor in weights.items():
        if name != "counter":
            torch.testing.assert_close(tensor, (a[name] + b[name]) / 2)
    assert weights["counter"].item() == 5  # integers are not averaged: the newest
    assert weights["counter"].dtype == torch.int64
    # The tied embedding is still one tensor, saved once.
    assert weights[TIED[0]] is weights[TIED[1]]
    assert averaged["step"] == 5 and averaged["averaged_from"] == ["a.pt", "b.pt"]
    weights.pop("counter")
    Seq2SeqTransformer(config).load_state_dict(weights)


def test_average_of_one_is_identity(tiny_config, tmp_path):
    a = write_checkpoint(tmp_path / "a.pt", tiny_config())
    averaged = average_checkpoints([tmp_path / "a.pt"])["model"]
    for name, tensor in a.items():
        assert torch.equal(averaged[name], tensor), name


def test_checkpoints_of_different_models_are_refused(tiny_config, tmp_path):
    write_checkpoint(tmp_path / "a.pt", tiny_config())
    write_checkpoint(tmp_path / "wide.pt", tiny_config(d_model=64, d_ff=128))
    write_checkpoint(tmp_path / "other_bpe.pt", tiny_config(), tokenizer='{"x": 1}')
    with pytest.raises(CheckpointError, match=r"wide\.pt .*model_config .*d_ff, d_m"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "wide.pt"])
    with pytest.raises(CheckpointError, match=r"other_bpe\.pt .*tokenizer differs"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "other_bpe.pt"])
    with pytest.raises(CheckpointError, match="no checkpoints to average"):
        average_checkpoints([])


def run_average(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "machine_translation.average", *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_average_cli_on_a_run(smoke_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    run = runs / "smoke" / smoke_run.name
    shutil.copytree(smoke_run, run)  # the session's run stays untouched
    steps = step_checkpoints(run / "checkpoints")
    assert [path.name for path in steps] == ["step-0000030.pt", "step-0000060.pt"]

    result = run_average("--runs-dir", str(runs), "--run-name", "smoke")
    assert result.returncode == 0, result.stderr
    assert "averaged 2 checkpoints (step-0000030, step-0000060)" in result.stdout
    assert "only 2 step checkpoints, not 5" in result.stderr
    averaged = run / "checkpoints" / "averaged.pt"
    _, _, payload = load_translation_model(averaged)
    assert payload["averaged_from"] == ["step-0000030.pt", "step-0000060.pt"]
    (tmp_path / "in.en").write_text("A dog runs.\nTwo men sit.\n")
    (tmp_path / "ref.fr").write_text("Un chien court.\nDeux hommes assis.\n")
    evaluation = ["--checkpoint", str(averaged), "--beam", "1", "--source"]
    evaluation += [f"{tmp_path}/in.en", "--references", f"{tmp_path}/ref.fr"]
    assert evaluate.main(evaluation) == 0
    assert f"checkpoint: {averaged}" in capsys.readouterr().out

    one = ["--run", str(run), "--last", "1", "--output", f"{tmp_path}/one.pt"]
    assert average.main(one) == 0
    _, _, last = load_translation_model(tmp_path / "one.pt")
    newest = torch.load(steps[-1], weights_only=True)["model"]
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, newest[name]), name

    assert average.main(["--runs-dir", str(runs)]) == 2  # no en-fr run there
    assert "no trained model found under" in capsys.readouterr().err
    for path in steps:
        path.unlink()
    assert average.main(["--run", str(run)]) == 2
    assert "keep_checkpoints=0" in capsys.readouterr().err
