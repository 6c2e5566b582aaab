"""Helpers shared by the test modules (a test module never imports another)."""

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_translate(*arguments, stdin: str | bytes = "", **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "machine_translation.translate", *arguments],
        cwd=PROJECT_ROOT,
        input=stdin,
        capture_output=True,
        text=isinstance(stdin, str),
        timeout=300,
        **kwargs,
    )
