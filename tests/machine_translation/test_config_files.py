"""Every model YAML in conf/model builds a working model; typos name the key."""

from pathlib import Path

import pytest
import torch

from decoder_transformer.gpt import GPT
from machine_translation.config.compose import CONFIG_DIR, load_model_config
from machine_translation.model import Seq2SeqTransformer

MODEL_FILES = sorted((CONFIG_DIR / "model").glob("*.yaml"))


def test_the_expected_model_sizes_exist():
    assert {"tiny", "small", "base"} <= {path.stem for path in MODEL_FILES}


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_every_model_config_builds_a_model_that_runs(path: Path):
    config = load_model_config(path.stem, vocab_size=101)
    source, target = torch.randint(1, 101, (2, 5)), torch.randint(1, 101, (2, 4))
    with torch.no_grad():
        assert Seq2SeqTransformer(config)(source, None, target).shape == (2, 4, 101)
        assert GPT(config)(target).shape == (2, 4, 101)


def test_unknown_key_in_a_yaml_file_is_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("d_model: 64\nn_head: 4\n")
    with pytest.raises(ValueError, match="unknown model config key 'n_head'"):
        load_model_config(path)


def test_missing_config_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match=r"available: .*tiny"):
        load_model_config("huge")
