"""One default per setting: each group's default YAML file states exactly what its
dataclass says (a value changed in one place only would make the two disagree)."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from machine_translation.config.compose import CONFIG_DIR
from machine_translation.config.schema import (
    DataConfig,
    DecodingConfig,
    OptimConfig,
    ScheduleConfig,
    TrainerConfig,
)

# The file each group's defaults list picks in conf/train.yaml, and its schema.
DEFAULT_FILES = {
    "data/default.yaml": DataConfig,
    "optim/adamw.yaml": OptimConfig,
    "schedule/inverse_sqrt.yaml": ScheduleConfig,
    "trainer/default.yaml": TrainerConfig,
    "decoding/default.yaml": DecodingConfig,
}
# The corpora are data, not settings: the schema's default is "none given".
NOT_SETTINGS = {"train", "valid"}


@pytest.mark.parametrize("name", DEFAULT_FILES)
def test_the_default_yaml_and_the_dataclass_agree_on_every_field(name):
    schema = DEFAULT_FILES[name]
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / name))
    fields = {f.name: f for f in dataclasses.fields(schema)}
    settings = set(fields) - NOT_SETTINGS
    assert set(values) - NOT_SETTINGS == settings, f"{name} states other fields"
    defaults = dataclasses.asdict(schema())  # nested sections as dicts too
    disagreeing = {
        key: (values[key], defaults[key])
        for key in settings
        if values[key] != defaults[key]
    }
    assert not disagreeing, f"{name} vs {schema.__name__}: {disagreeing}"


def test_the_train_config_picks_those_files():
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml"))[
        "defaults"
    ]
    picked = {
        f"{group}/{choice}.yaml"
        for entry in defaults
        if isinstance(entry, dict)
        for group, choice in entry.items()
        if not group.startswith("override")
    }
    assert set(DEFAULT_FILES) <= picked
