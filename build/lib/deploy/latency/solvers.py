"""Small least-squares solvers in numpy (the package does not depend on scipy)."""

from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """min ||a·x − b|| subject to x ≥ 0 (Lawson–Hanson active set; exact in finitely many steps)."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(a.shape) * max(float(np.abs(a).sum(axis=0).max(initial=0.0)), 1.0)
    for _ in range(max_iter or 3 * n + 10):
        w = a.T @ (b - a @ x)
        if passive.all() or float(np.max(np.where(passive, -np.inf, w))) <= tol:
            break
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > tol):
                x = z
                break
            neg = passive & (z <= tol)
            alpha = float(np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300)))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
    return x


def nnls_offset(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """argmin Σ ((x·s + c − y) / y)² over s ≥ 0 and a free offset c. For given s the best c is the mean
    of y − x·s weighted by 1/y², so c is projected out exactly and the rest is a plain NNLS."""
    w = 1 / y**2
    x_mean, y_mean = (w[:, None] * x).sum(0) / w.sum(), float((w * y).sum() / w.sum())
    sw = np.sqrt(w)
    s = nnls(sw[:, None] * (x - x_mean), sw * (y - y_mean))
    return s, y_mean - float(x_mean @ s)


def ridge_loo(z: np.ndarray, t: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Ridge coefficients of centred t on centred z, the penalty picked by closed-form leave-one-out error.

    The intercept (the means) is not penalised; its leave-one-out leverage 1/n is counted.
    """
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    uy = u.T @ t
    best, beta = np.inf, np.zeros(z.shape[1])
    for lam in lambdas:
        f = s**2 / (s**2 + lam)
        loo = (t - u @ (f * uy)) / np.maximum(1 - (u**2) @ f - 1 / len(t), 1e-9)
        if float(np.mean(loo**2)) < best:
            best, beta = float(np.mean(loo**2)), vt.T @ (f / np.where(s > 1e-12, s, np.inf) * uy)
    return beta
