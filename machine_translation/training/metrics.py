"""The run's record: ``metrics.jsonl`` (one JSON object per line) and ``curves.png``.

Each line has a ``kind`` (``train`` or ``valid``), the step, and the measurements; the
plot shows training and validation loss against steps, and the validation score
(BLEU) on a second axis. Both are rewritten as the run goes, so a run in progress can
be watched (``tail -f metrics.jsonl``) and a killed one keeps its history.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends measurements to ``run_dir/metrics.jsonl`` and draws ``curves.png``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.plot_path = Path(run_dir) / "curves.png"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, kind: str, **values: Any) -> None:
        """Appends one record, e.g. ``log("valid", step=500, loss=2.1, bleu=31.4)``."""
        record = {"kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All records so far (of one kind, if given)."""
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8") as file:
            rows = [json.loads(line) for line in file if line.strip()]
        return [row for row in rows if kind is None or row["kind"] == kind]

    def plot(self, score: str | None = "bleu") -> Path:
        """Draws loss curves (and a validation score, if named) into ``curves.png``."""
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt

        train, valid = self.records("train"), self.records("valid")
        figure, loss_axis = plt.subplots(figsize=(8, 4.5))
        loss_axis.plot(
            [r["step"] for r in train],
            [r["loss"] for r in train],
            label="train loss",
            alpha=0.6,
        )
        loss_axis.plot(
            [r["step"] for r in valid],
            [r["loss"] for r in valid],
            "o-",
            label="validation loss",
        )
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss (nats/token)")
        handles, labels = loss_axis.get_legend_handles_labels()
        scored = [r for r in valid if score in r] if score else []
        if scored:
            score_axis = loss_axis.twinx()
            score_axis.plot(
                [r["step"] for r in scored],
                [r[score] for r in scored],
                "s-",
                color="tab:green",
                label=f"validation {score.upper()}",
            )
            score_axis.set_ylabel(score.upper())
            more_handles, more_labels = score_axis.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        loss_axis.legend(handles, labels, loc="upper center")
        loss_axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(self.plot_path, dpi=100)
        plt.close(figure)
        return self.plot_path


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (tensors and NaN included)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
