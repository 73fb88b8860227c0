"""The retry policy: a frozen value and a pure back-off function."""

import dataclasses

import pytest

from durable.retry import RetryPolicy, backoff_delay_seconds


def test_backoff_is_exponential_and_capped():
    delays = [backoff_delay_seconds(k, 1.0, 2.0, 5.0) for k in range(1, 6)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_fixed_interval_with_backoff_one():
    assert [backoff_delay_seconds(k, 2.0, 1.0, 60.0) for k in (1, 2, 3)] == [2.0, 2.0, 2.0]


def test_jitter_stays_within_the_upper_half():
    assert backoff_delay_seconds(3, 1.0, 2.0, 60.0, jitter_fraction=0.0) == 2.0
    assert backoff_delay_seconds(3, 1.0, 2.0, 60.0, jitter_fraction=0.999) == pytest.approx(4.0, abs=0.01)


def test_huge_exponents_do_not_overflow():
    assert backoff_delay_seconds(100_000, 1.0, 10.0, 30.0) == 30.0


def test_retries_mean_attempts_after_the_first():
    policy = RetryPolicy(retries=2, retry_on=(ConnectionError,), dont_retry_on=(TimeoutError,))
    assert policy.max_attempts == 3
    assert policy.should_retry(ConnectionError(), 1) and policy.should_retry(ConnectionError(), 2)
    assert not policy.should_retry(ConnectionError(), 3)
    assert not policy.should_retry(ValueError(), 1)
    assert policy.should_retry(ConnectionResetError(), 1)  # a ConnectionError subclass


def test_policy_is_frozen_and_validated():
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 3  # type: ignore[misc]
    for bad in (dict(retries=-1), dict(backoff=0.5), dict(interval_seconds=-1), dict(timeout_seconds=0)):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_step_decorator_rejects_bad_policies():
    from durable import Durable

    dur = Durable(database_url="sqlite://", broker_url="memory://")
    with pytest.raises(ValueError, match="retries"):
        dur.step(retries=-2)
    with pytest.raises(TypeError, match="retry_on"):
        dur.step(retry_on=("ConnectionError",))
