"""Imports flow one way: machine_translation → decoder_ → encoder_transformer."""

import subprocess
import sys

import pytest

UPPER = {
    "encoder_transformer": [
        "decoder_transformer",
        "machine_translation",
        "hydra",
        "omegaconf",
    ],
    "decoder_transformer": ["machine_translation", "hydra", "omegaconf"],
}


@pytest.mark.parametrize("package", UPPER)
def test_lower_package_imports_no_upper_one(package):
    forbidden = UPPER[package]
    code = (
        f"import sys, {package}, pkgutil, importlib\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print([m for m in {forbidden!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
