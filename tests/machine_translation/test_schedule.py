import itertools

import pytest
import torch

from machine_translation.training.schedule import build_scheduler, lr_multiplier


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
