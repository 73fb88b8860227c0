"""The one back-off helper every wait loop uses, and the step policy's delays."""

from __future__ import annotations

import pytest

from durable.retry import Backoff, RetryPolicy


def test_pauses_double_up_to_their_cap() -> None:
    backoff = Backoff(0.05, 0.5)
    assert [backoff.next_pause() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert backoff.pauses == 6


def test_a_pause_never_outlasts_the_deadline() -> None:
    backoff = Backoff(1.0, 8.0)
    assert backoff.next_pause(remaining_seconds=0.3) == pytest.approx(0.3)
    assert backoff.next_pause(remaining_seconds=-1.0) == 0.0
    assert backoff.next_pause(remaining_seconds=100) == pytest.approx(4.0)


def test_jitter_draws_from_the_upper_half() -> None:
    draws = iter([0.0, 0.999, 0.5])
    backoff = Backoff(1.0, 10.0, jitter=True, random_fraction=lambda: next(draws))
    assert backoff.next_pause() == pytest.approx(0.5)
    assert backoff.next_pause() == pytest.approx(1.999)
    assert backoff.next_pause() == pytest.approx(3.0)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_step_policy_delays_follow_the_contract() -> None:
    policy = RetryPolicy(retries=5, interval_seconds=2.0, backoff=1.5, max_interval_seconds=4.0)
    assert [policy.delay_seconds(k) for k in range(1, 5)] == pytest.approx([2.0, 3.0, 4.0, 4.0])
    assert policy.max_attempts == 6
