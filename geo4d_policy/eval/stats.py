"""Statistics of success rates: the Wilson score interval.

The Wilson interval is used instead of the normal approximation because evaluation runs are
small (tens of episodes) and success rates often sit at 0 or 1, where the normal interval
collapses to a point.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile."""


def wilson_interval(successes: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Args:
        successes: number of successes ``k``, ``0 <= k <= n``.
        n: number of trials; ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
        z: standard-normal quantile (default: two-sided 95%).

    Returns:
        ``(lo, hi)`` with ``0 <= lo <= k/n <= hi <= 1``; ``lo`` is exactly 0 when ``k == 0`` and
        ``hi`` exactly 1 when ``k == n``.

    Raises:
        ValueError: negative counts or ``successes > n``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes} n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    # At k = 0 or k = n the bound is exact in theory; pin it so rounding cannot leave 1e-17 gaps.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi
