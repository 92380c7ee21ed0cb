"""REML / ML estimates of a linear mixed model by lme4's profiled deviance (Bates et al. 2015,
JSS 67(1), section 3), in numpy/scipy: an independent cross-check for the Gaussian cases where
no published lme4 output is at hand. Not a case folder (no spec.yaml); imported by reference.py.

A model is X (n x p), y (n,) and random-effect terms, each ``(index, Zcols)``: the level of every
row (0..m-1) and the row's covariates for that term (n x k; a column of ones for an intercept).
Each term has a k x k lower-triangular relative Cholesky factor, so the sd's and correlations
come out as in ``VarCorr``. Dense q x q algebra: fine for q up to a few thousand.

    fit = lmm_fit(X, y, [(subject_index, np.c_[np.ones(n), days])], reml=True)
    fit["beta"], fit["sigma"], fit["sd"][0], fit["cor"][0]
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.optimize as so
import scipy.sparse as sp


def _design(terms, n):
    """Sparse Z (n x q), columns ordered (term, level, component), and per-term offsets."""
    blocks, sizes = [], []
    for idx, zc in terms:
        idx = np.asarray(idx, int)
        zc = np.asarray(zc, float).reshape(n, -1)
        m, k = idx.max() + 1, zc.shape[1]
        rows = np.repeat(np.arange(n), k)
        cols = (idx[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        blocks.append(sp.csr_matrix((zc.reshape(-1), (rows, cols)), shape=(n, m * k)))
        sizes.append((m, k))
    return sp.hstack(blocks).tocsr(), sizes


def _n_theta(k):
    return k * (k + 1) // 2


def _lambda(theta, sizes):
    """Block-diagonal sparse Lambda(theta) (q x q)."""
    parts, pos = [], 0
    for m, k in sizes:
        t = theta[pos:pos + _n_theta(k)]
        pos += _n_theta(k)
        T = np.zeros((k, k))
        T[np.tril_indices(k)] = t
        parts.append(sp.kron(sp.identity(m), sp.csr_matrix(T)))
    return sp.block_diag(parts).tocsr()


def lmm_fit(X, y, terms, reml=True, polish=True):
    """REML (or ML) fit; ``polish``: refine L-BFGS-B's optimum by Nelder-Mead (slow for large q)."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    n, p = X.shape
    Z, sizes = _design(terms, n)
    ZtZ = (Z.T @ Z).toarray()
    ZtX = np.asarray(Z.T @ X)
    Zty = np.asarray(Z.T @ y)
    XtX, Xty, yty = X.T @ X, X.T @ y, y @ y
    q = ZtZ.shape[0]

    def solve(theta):
        Lam = _lambda(theta, sizes)
        A = np.asarray((Lam.T @ (Lam.T @ ZtZ).T))          # Lam' ZtZ Lam (ZtZ symmetric)
        A[np.diag_indices(q)] += 1.0
        LtZtX = np.asarray(Lam.T @ ZtX)
        LtZty = np.asarray(Lam.T @ Zty)
        cL = sla.cho_factor(A, lower=True)
        logdetL = 2.0 * np.log(np.diag(cL[0])).sum()
        W = sla.cho_solve(cL, LtZtX)
        RX = XtX - LtZtX.T @ W
        beta = np.linalg.solve(RX, Xty - LtZtX.T @ sla.cho_solve(cL, LtZty))
        u = sla.cho_solve(cL, LtZty - LtZtX @ beta)
        r2 = yty - 2 * y @ (X @ beta) + beta @ XtX @ beta \
            - 2 * u @ (LtZty - LtZtX @ beta) + u @ (A @ u)  # ||y - X b - Z Lam u||^2 + ||u||^2
        return logdetL, np.linalg.slogdet(RX)[1], r2, beta, Lam

    def deviance(theta):
        logdetL, logdetRX, r2, _, _ = solve(theta)
        if r2 <= 0:
            return np.inf
        if reml:
            return logdetL + logdetRX + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
        return logdetL + n * (1 + np.log(2 * np.pi * r2 / n))

    theta0, lower = [], []
    for m, k in sizes:
        T = np.eye(k)
        theta0 += list(T[np.tril_indices(k)])
        lower += [0.0 if i == j else -np.inf for i, j in zip(*np.tril_indices(k))]
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    best = so.minimize(deviance, np.array(theta0), method="L-BFGS-B", bounds=bounds)
    if polish:
        best = so.minimize(deviance, best.x, method="Nelder-Mead", bounds=bounds,
                           options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000})
    theta = best.x
    _, _, r2, beta, _ = solve(theta)
    sigma = float(np.sqrt(r2 / (n - p if reml else n)))
    sds, cors, pos = [], [], 0
    for m, k in sizes:
        T = np.zeros((k, k))
        T[np.tril_indices(k)] = theta[pos:pos + _n_theta(k)]
        pos += _n_theta(k)
        S = sigma ** 2 * T @ T.T
        sd = np.sqrt(np.diag(S))
        sds.append(sd)
        cors.append(S / np.outer(sd, sd) if np.all(sd > 0) else np.full((k, k), np.nan))
    return {"beta": beta, "sigma": sigma, "sd": sds, "cor": cors, "theta": theta,
            "deviance": float(best.fun), "reml": reml}


def codes(values):
    """Integer codes and the sorted labels of a column (as hbm orders string levels)."""
    labels, idx = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return idx, list(labels)
