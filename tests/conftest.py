"""Tiny sizes shared by the tests: every model here runs in milliseconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from encoder_transformer.config import TransformerConfig

TINY = {
    "vocab_size": 37,
    "d_model": 32,
    "n_heads": 4,
    "d_ff": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.0,
    "max_positions": 64,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> Callable[..., TransformerConfig]:
    """``tiny_config(**overrides)`` builds a small, dropout-free config."""

    def build(**overrides) -> TransformerConfig:
        return TransformerConfig(**{**TINY, **overrides})

    return build
