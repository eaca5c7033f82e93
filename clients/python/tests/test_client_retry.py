"""RetryPolicy: bounded attempts, growing delays with jitter, patience with an overloaded hub."""

from opsroom_client import RetryPolicy


def test_delays_are_one_fewer_than_attempts_and_grow_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(attempts=6, first_delay=0.1, max_delay=0.4)
    for _ in range(100):
        delays = list(policy.delays())
        assert len(delays) == 5
        bases = [0.1, 0.2, 0.4, 0.4, 0.4]
        for delay, base in zip(delays, bases, strict=True):
            assert base * 0.5 <= delay <= base * 1.5


def test_one_attempt_means_no_retry() -> None:
    assert list(RetryPolicy(attempts=1).delays()) == []


def test_patience_counts_from_the_first_refusal() -> None:
    policy = RetryPolicy(patience=120.0)
    assert policy.patient(first_refused=10.0, now=129.9)
    assert not policy.patient(first_refused=10.0, now=130.0)
