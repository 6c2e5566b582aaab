import os
import pickle

import pytest
import torch

from machine_translation.checkpoints.files import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from machine_translation.checkpoints.runs import find_checkpoint


def test_round_trip_with_weights_only(tmp_path):
    path = save_checkpoint(
        {"model": {"w": torch.arange(3.0)}, "tokenizer": "{}", "step": 7},
        tmp_path / "ckpt" / "last.pt",
    )
    payload = load_checkpoint(path)
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["step"] == 7
    torch.testing.assert_close(payload["model"]["w"], torch.arange(3.0))
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint({"model": {"w": torch.zeros(2)}}, tmp_path / "last.pt")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": {}, "bad": Unsaveable()}, path)
    torch.testing.assert_close(load_checkpoint(path)["model"]["w"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*train a model"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint({"model": {"w": torch.randn(1000)}}, tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_random_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Exploit()}, path)
    with pytest.raises(CheckpointError, match="holds Python objects") as refused:
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    # Never advice to load the file unsafely (torch's own message gives it).
    assert "weights_only" not in str(refused.value)


def test_other_files_and_newer_formats_are_rejected(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this toolkit"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {}, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade the toolkit"):
        load_checkpoint(tmp_path / "new.pt")
    with open(tmp_path / "plain.pkl", "wb") as file:
        pickle.dump([1, 2], file)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")


def test_find_checkpoint_takes_the_most_recent_run(tmp_path):
    old = save_checkpoint(
        {"model": {}}, tmp_path / "en-fr" / "2026-01-01" / "checkpoints" / "best.pt"
    )
    new = save_checkpoint(
        {"model": {}}, tmp_path / "en-fr" / "2026-02-01" / "checkpoints" / "best.pt"
    )
    os.utime(old, (1, 1))
    assert find_checkpoint(tmp_path, "en-fr") == new
    assert find_checkpoint(tmp_path, "en-fr", prefer="last") == new  # falls back
    with pytest.raises(CheckpointError, match="no trained model found"):
        find_checkpoint(tmp_path, "gpt")
