"""Per-metric summary statistics: n, mean, sample standard deviation, and a 95% Student-t confidence interval.

The interval is mean ± t_{0.975, n-1} · s / sqrt(n) (the t-interval for the mean of n per-image values, which
treats the images as an independent sample); computed in float64 without scipy.
"""
from __future__ import annotations

import math
from typing import Sequence

CI_METHOD = "t-interval: mean ± t(0.975, n-1) · std / sqrt(n), std with n-1 (Student t, 95%)"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``dof`` >= 1 degrees of freedom (bisection, 1e-12)."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def summarize(values: Sequence[float]) -> dict[str, object]:
    """{"n", "mean", "std", "ci95": [low, high]} of per-image values (std and interval None for n < 2)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = math.fsum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paste_ready(summary: dict[str, object]) -> str:
    """``summarize``'s result as one line to paste into a paper: ``0.213 ± 0.004 (95% CI, n = 3,640)``, the
    half-width of the interval to one significant digit and the mean rounded to the same place (``0.2131 (n = 1)``
    without an interval, ``no value (n = 0)`` without values)."""
    n, mean, ci = summary["n"], summary["mean"], summary["ci95"]
    if mean is None:
        return "no value (n = 0)"
    if ci is None:
        return f"{mean:.4g} (n = {n:,})"
    half = (ci[1] - ci[0]) / 2
    if not half > 0:
        return f"{mean:.6g} ± 0 (95% CI, n = {n:,})"
    digit = math.floor(math.log10(half))  # the half-width's first significant digit: 10**digit
    if digit >= 0:  # 35688 ± 4456 -> 36000 ± 4000
        return f"{round(mean, -digit):.0f} ± {round(half, -digit):.0f} (95% CI, n = {n:,})"
    return f"{mean:.{-digit}f} ± {half:.{-digit}f} (95% CI, n = {n:,})"
