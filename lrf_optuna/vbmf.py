"""Empirical variational Bayesian matrix factorization (EVBMF) rank estimation.

Written from the global analytic solution of fully observed VBMF with unknown noise
variance (Nakajima, Sugiyama, Babacan & Tomioka, JMLR 2013), as Kim et al. (2016) used it to
pick Tucker-2 ranks from the weight unfoldings. For an ``L x M`` matrix ``V`` (``L <= M``)
with singular values ``gamma_h``, write ``alpha = L / M`` and, for a noise variance
``sigma^2``, ``x_h = gamma_h^2 / (M sigma^2)``. A component survives when
``x_h > x_bar = (1 + tau_bar)(1 + alpha / tau_bar)``, with the paper's threshold constant
``tau_bar ~ 2.5129 sqrt(alpha)``. The noise variance minimises the free energy

    F(sigma^2) = sum_{x_h <= x_bar} (x_h - log x_h)
               + sum_{x_h > x_bar} (x_h - tau_h + log((tau_h + 1) / x_h)
                                    + alpha log(tau_h / alpha + 1))
               + residual / (M sigma^2) + (L - H) log sigma^2

with ``tau_h = (x_h - (1 + alpha) + sqrt((x_h - (1 + alpha))^2 - 4 alpha)) / 2``, searched
between the paper's lower and upper bounds. The estimated rank is the number of singular
values above ``sqrt(M sigma^2 x_bar)``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> low = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 80))
    >>> evbmf_rank(low + 0.1 * rng.standard_normal((60, 80)))
    5
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["evbmf_rank"]

TAU_BAR_COEF = 2.5129


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    d = x - (1 + alpha)
    return 0.5 * (d + np.sqrt(np.maximum(d * d - 4 * alpha, 0.0)))


def _free_energy(sigma2: float, L: int, M: int, s: np.ndarray, residual: float,
                 x_bar: float) -> float:
    alpha = L / M
    x = s**2 / (M * sigma2)
    big, small = x[x > x_bar], x[x <= x_bar]
    tau_big = _tau(big, alpha)
    return float(
        np.sum(small - np.log(small))
        + np.sum(big - tau_big)
        + np.sum(np.log((tau_big + 1) / big))
        + alpha * np.sum(np.log(tau_big / alpha + 1))
        + residual / (M * sigma2)
        + (L - len(s)) * math.log(sigma2)
    )


def evbmf_rank(matrix: np.ndarray) -> int:
    """Rank EVBMF retains for ``matrix`` (any orientation; noise variance estimated)."""
    V = np.asarray(matrix, dtype=np.float64)
    if V.ndim != 2 or min(V.shape) == 0:
        raise ValueError(f"evbmf_rank needs a non-empty 2-D matrix, got shape {V.shape}")
    if not np.all(np.isfinite(V)):
        raise ValueError("evbmf_rank: the matrix has NaN or Inf entries")
    if V.shape[0] > V.shape[1]:
        V = V.T
    L, M = V.shape
    s = np.linalg.svd(V, compute_uv=False)
    if s[0] <= 0:
        return 0
    H = L
    alpha = L / M
    tau_bar = TAU_BAR_COEF * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = max(float(np.sum(V * V) - np.sum(s**2)), 0.0)
    # bounds on sigma^2 (Nakajima et al. 2013, Theorem 5 and its discussion)
    h_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
    upper = (float(np.sum(s**2)) + residual) / (L * M)
    tail = s[h_ub + 1:] if h_ub + 1 < len(s) else s[-1:]
    lower = max(float(tail[0] ** 2) / (M * x_bar), float(np.mean(tail**2)) / M)
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        res = minimize_scalar(_free_energy, args=(L, M, s, residual, x_bar),
                              bounds=(lower, upper), method="bounded")
        sigma2 = float(res.x)
    threshold = math.sqrt(M * sigma2 * x_bar)
    return int(np.sum(s > threshold))
