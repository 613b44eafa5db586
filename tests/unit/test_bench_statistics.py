"""The benchmarks' statistics: percentiles over figures some of which were not done when the
wait ended, and the steady rate of a run of completions."""

import math

import pytest

from bench.benchmarks.common import central_rate, finite, percentile, summary


def test_a_percentile_interpolates_between_the_closest_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert math.isnan(percentile([], 50))


def test_a_percentile_among_what_was_not_done_is_not_done():
    late = [0.1] * 98 + [math.inf] * 2
    assert percentile(late, 50) == pytest.approx(0.1)
    assert math.isinf(percentile(late, 99))
    assert math.isinf(percentile([1.0, math.inf], 50))
    assert finite(summary(late))["p99"] is None


def test_the_central_rate_is_not_bent_by_a_slow_start_or_a_last_retry():
    steady = [10 + n / 100 for n in range(1000)]  # 100 a second
    assert central_rate(steady) == pytest.approx(100)
    assert central_rate([0.0, *steady, 40.0]) == pytest.approx(100, rel=0.01)
