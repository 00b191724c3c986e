"""Wilson score interval against hand-computed values (k + z^2/2 +- z sqrt(k(n-k)/n + z^2/4)) / (n + z^2)."""

import pytest

from geo4d_policy.eval.stats import Z_95, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (5, 10, 0.236593091, 0.763406909),  # the textbook 0.2366-0.7634
        (3, 4, 0.300641843, 0.954412739),
        (7, 30, 0.117923881, 0.409283262),
        (0, 10, 0.0, 0.277532800),  # hi = z^2 / (n + z^2)
        (10, 10, 0.722467200, 1.0),  # lo = n / (n + z^2)
        (1, 1, 0.206549314, 1.0),
    ],
)
def test_wilson_hand_computed(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-8)


def test_wilson_edges_exact():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
    assert Z_95 == pytest.approx(1.96, abs=1e-3)


def test_wilson_contains_estimate_and_narrows():
    for n in range(1, 25):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] < wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3), (0, -1)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)
