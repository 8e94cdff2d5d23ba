"""The learning-rate schedule that fits a time budget."""

from __future__ import annotations

import math
import time

import pytest
import torch

from oasis_gen.engines.schedules import BudgetCosineLR


def make(total_steps: int, minutes: float | None, **kwargs) -> tuple[torch.optim.Optimizer, BudgetCosineLR]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return optimizer, BudgetCosineLR(optimizer, total_steps, minutes, **kwargs)


def lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def test_without_budget_it_is_a_cosine_over_the_steps():
    optimizer, schedule = make(10, None, eta_min_ratio=0.0)
    seen = [lr(optimizer)]
    for _ in range(10):
        optimizer.step()
        schedule.step()
        seen.append(lr(optimizer))
    expected = [0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(11)]
    assert seen == pytest.approx(expected, abs=1e-6)


def test_the_clock_anneals_a_run_stopped_by_its_budget_long_before_its_steps():
    optimizer, schedule = make(1_000_000, 0.05 / 60, eta_min_ratio=0.05)  # 50 ms budget, a million steps
    optimizer.step()
    schedule.step()                     # the first step starts the clock (caching is not training time)
    assert lr(optimizer) > 0.99
    time.sleep(0.06)
    optimizer.step()
    schedule.step()
    assert lr(optimizer) == pytest.approx(0.05)


def test_resume_continues_the_curve_from_the_saved_wall_time():
    optimizer, schedule = make(1_000_000, 1.0 / 60, eta_min_ratio=0.0)  # 1 s budget
    optimizer.step()
    schedule.step()
    time.sleep(0.3)
    state = schedule.state_dict()
    assert 0.3 <= state["elapsed_before"] < 0.9
    optimizer2, resumed = make(1_000_000, 1.0 / 60, eta_min_ratio=0.0)
    resumed.load_state_dict(state)
    optimizer2.step()
    resumed.step()
    resumed.step()
    # at least 30 % of the budget was spent before the save: the resumed rate is below cos at 30 %
    assert lr(optimizer2) <= 0.5 * (1 + math.cos(math.pi * 0.3)) + 1e-6


def test_warmup_ramps_from_a_tenth():
    optimizer, schedule = make(100, None, warmup_steps=10, eta_min_ratio=0.0)
    assert lr(optimizer) == pytest.approx(0.1)
    for _ in range(10):
        optimizer.step()
        schedule.step()
    assert lr(optimizer) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)), rel=1e-6)
