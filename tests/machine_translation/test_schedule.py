import itertools

import pytest
import torch

from machine_translation.config.schema import ScheduleConfig
from machine_translation.training.schedule import (
    build_scheduler,
    lr_multiplier,
    time_progress,
)
from machine_translation.training.state import TrainingState


@pytest.mark.parametrize("kind", ["inverse_sqrt", "cosine", "constant"])
def test_warmup_rises_linearly_to_the_peak(kind):
    values = [lr_multiplier(step, kind, 10, 100) for step in range(10)]
    assert values == pytest.approx([(s + 1) / 10 for s in range(10)])


def test_inverse_sqrt_and_cosine_decay():
    assert lr_multiplier(39, "inverse_sqrt", 10, 100) == pytest.approx(0.5)
    cosine = [
        lr_multiplier(s, "cosine", 10, 100, min_lr_ratio=0.1) for s in range(10, 200)
    ]
    assert all(a >= b for a, b in itertools.pairwise(cosine))
    assert cosine[-1] == pytest.approx(0.1)


def test_scheduler_drives_the_optimizer():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, "inverse_sqrt", 4, 100)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx(
        [0.5, 1.0, 1.5, 2.0, 2.0 * (4 / 5) ** 0.5, 2.0 * (4 / 6) ** 0.5]
    )


def test_unknown_schedule_is_named():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"schedule\.kind='linear'"):
        build_scheduler(optimizer, "linear", 4, 100)


def test_time_horizon_decays_with_the_clock_not_the_steps():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    clock = {"progress": 0.0}
    scheduler = build_scheduler(
        optimizer, "cosine", 2, 10**6, 0.1, progress=lambda: clock["progress"]
    )
    rates = []
    for progress in (0.0, 0.0, 0.0, 0.5, 1.0, 1.0):
        clock["progress"] = progress
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    # warm-up by steps, then the cosine follows the clock: half-way, then the floor
    assert rates == pytest.approx([1.0, 1.0, 1.0, 0.55, 0.1, 0.1])


def test_time_progress_counts_from_the_end_of_warm_up():
    assert time_progress(10.0, None, 100.0) == 0.0
    assert time_progress(55.0, 10.0, 100.0) == pytest.approx(0.5)
    assert time_progress(500.0, 10.0, 100.0) == 1.0


def test_training_state_notes_when_warm_up_ended():
    state = TrainingState()
    for step, seconds in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        state.step = step
        state.tick(seconds, warmup_steps=2)
    assert state.decay_start_seconds == 2.0
    assert state.decay_progress(budget_seconds=12.0) == pytest.approx(0.1)


def test_unknown_horizon_is_named():
    with pytest.raises(ValueError, match=r"schedule\.horizon='hours'"):
        ScheduleConfig(kind="cosine", horizon="hours")
