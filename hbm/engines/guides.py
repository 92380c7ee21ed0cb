"""Variational guides: which family of distributions approximates the posterior (``inference.guide``).

============  =====================================================================  ==============
guide         q(z)                                                                   parameters
============  =====================================================================  ==============
normal        mean field: an independent normal per latent scalar (AutoNormal)      2 D
lowrank       normal, covariance ``W W' + diag`` of rank ``inference.rank``          (rank + 2) D
              (default ``sqrt(D)``; AutoLowRankMultivariateNormal)
mvn           normal with a dense covariance (AutoMultivariateNormal): small models  D + D(D+1)/2
structured    :class:`AutoHierarchicalNormal`: the population-level parameters       about D (G + k)
              jointly normal (dense), each group's block of parameters normal
              given them, linearly (see below)
delta         a point mass (AutoDelta): the posterior mode, no uncertainty           D
============  =====================================================================  ==============

(D latent scalars in all; G population-level ones; k per group.)

Why ``structured``: in a hierarchical model written non-centred (as hbm lowers
it), each group's value is ``population + sd * z_g``. The data pin the group
values, so the posterior of the population parameters is strongly correlated
with *every* ``z_g`` at once. A mean-field guide cannot express that and pays
for it by shrinking the population parameters' uncertainty (the population
intercept of a 24-subject varying-slopes model: sd 1.2 under mean field, 6.6
under NUTS). The structured guide keeps exactly those dependencies and drops
the ones between groups, which the data leave weak:

    eps_pop, eps_g ~ N(0, I)
    z_pop = m_pop + L_pop eps_pop                    (dense, G x G lower triangular)
    z_g   = m_g + A_g eps_pop + L_g eps_g            (per group level g: k x G and k x k)

so the joint covariance has an "arrowhead" shape: dense among the population
parameters, a dense k x k block per group, and a dense coupling of each block
to the population parameters. Its cost per step grows like ``D * G``, linear
in the number of groups, and its log density is a sum of triangular
log-determinants (no D x D matrix anywhere).

Which sites are "population-level": every latent site outside a plate, plus
every plate but the one with the most values, smallest first, while each has
at most ``PROMOTE_MAX`` values and the block stays within ``GLOBAL_MAX`` (the
categories of a product-within-category chain; a category x period factor
crossed with the products, whose values are correlated with every product's
intercept); a site outside every plate that would take the population block past
``GLOBAL_MAX`` (a factor with thousands of levels) is given one independent
block per value instead.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_uniform

from hbm.errors import HbmError, did_you_mean
from hbm.vocabulary.names import DEFAULT_GUIDE, GUIDES

GLOBAL_MAX = 64      # population-level values kept in one dense block
PROMOTE_MAX = 64     # a plate whose values fit this (and GLOBAL_MAX) joins the population block
MVN_MAX = 2000       # the dense guide's D x D factor is refused above this


def guide_factory(kind: str, rank: int | None = None) -> Callable:
    """``factory(model, init_loc_fn) -> AutoGuide`` for a name of ``inference.guide``.

    >>> factory = guide_factory("structured")
    >>> guide = factory(lambda: None, init_to_uniform)  # doctest: +SKIP
    """
    from numpyro.infer import autoguide as ag

    if kind == "normal":
        return lambda model, init: ag.AutoNormal(model, init_loc_fn=init)
    if kind == "lowrank":
        if rank is not None and int(rank) < 1:
            raise HbmError(f"rank must be at least 1, got {rank}", where="inference.rank")
        return lambda model, init: ag.AutoLowRankMultivariateNormal(
            model, init_loc_fn=init, **({"rank": int(rank)} if rank else {}))
    if kind == "mvn":
        return lambda model, init: _CheckedMVN(model, init_loc_fn=init)
    if kind == "structured":
        return lambda model, init: AutoHierarchicalNormal(model, init_loc_fn=init)
    if kind == "delta":
        return lambda model, init: ag.AutoDelta(model, init_loc_fn=init)
    dym = did_you_mean(str(kind), GUIDES)
    raise HbmError(f"unknown guide '{kind}'", where="inference.guide",
                   hint=(f"{dym} " if dym else "") + f"guides: {', '.join(GUIDES)}")


class _CheckedMVN(numpyro.infer.autoguide.AutoMultivariateNormal):
    """AutoMultivariateNormal that refuses a latent space too large for a dense D x D factor."""

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        if self.latent_dim > MVN_MAX:
            raise HbmError(f"guide: mvn needs a dense {self.latent_dim} x {self.latent_dim} factor; "
                           f"this model has {self.latent_dim} latent values (more than {MVN_MAX})",
                           where="inference.guide",
                           hint="use guide: structured (linear in the number of groups) or lowrank")


# ---------------------------------------------------------------- the structured guide

@dataclass(frozen=True)
class Layout:
    """Where each value of the flat latent vector goes.

    ``glob``: positions (in the flat latent vector) of the population-level values, G of them.
    ``blocks``: per plate (or large site), positions of shape (levels, k).
    """

    glob: np.ndarray
    blocks: tuple[tuple[str, np.ndarray], ...]

    @property
    def perm(self) -> np.ndarray:
        """Positions in block order: population values, then each block level by level."""
        return np.concatenate([self.glob] + [idx.reshape(-1) for _, idx in self.blocks]).astype(np.int32)


def plan_layout(sites: list[tuple[str, tuple, int, list[tuple[str, int]]]],
                global_max: int = GLOBAL_MAX, promote_max: int = PROMOTE_MAX) -> Layout:
    """Split the latent vector into the population block and per-group blocks.

    ``sites``: per latent site in flat order, ``(name, unconstrained shape, plate axis or -1,
    [(plate name, size)])`` where the plate axis is the axis that indexes the site's largest
    plate (-1 when the site is in no plate, or its plate cannot be located).
    """
    offset = 0
    glob: list[np.ndarray] = []
    singles: list[tuple[str, np.ndarray]] = []        # sites outside plates
    plated: dict[str, list[np.ndarray]] = {}          # plate -> [(levels, k_site) positions]
    for name, shape, axis, plates in sites:
        n = int(np.prod(shape, dtype=np.int64))
        pos = np.arange(offset, offset + n).reshape(shape)
        offset += n
        if axis < 0:
            singles.append((name, pos.reshape(-1)))
        else:
            levels = shape[axis]
            plated.setdefault(plates[0][0], []).append(np.moveaxis(pos, axis, 0).reshape(levels, -1))
    # population block: sites outside plates, smallest first, up to global_max values
    singles.sort(key=lambda s: s[1].size)
    used = 0
    blocks: list[tuple[str, np.ndarray]] = []
    for name, pos in singles:
        if used + pos.size <= global_max:
            glob.append(pos)
            used += pos.size
        else:
            blocks.append((name, pos[:, None]))
    groups = {p: np.concatenate(parts, axis=1) for p, parts in plated.items()}
    # the plate with the most values keeps its blocks; smaller plates join the population block
    # while it has room, smallest first (categories above products, a crossed category x period
    # factor beside them: their values are correlated with every product's block)
    largest = max(groups, key=lambda p: groups[p].size, default=None)
    for plate in sorted(groups, key=lambda p: groups[p].size):
        g = groups[plate]
        if plate != largest and g.size <= promote_max and used + g.size <= global_max:
            glob.append(g.reshape(-1))
            used += g.size
        else:
            blocks.append((plate, g))
    glob_pos = np.concatenate(glob) if glob else np.zeros(0, np.int64)
    return Layout(glob_pos.astype(np.int32), tuple((k, v.astype(np.int32)) for k, v in blocks))


class BlockArrowAffine(Transform):
    """``y = loc + P (L x)`` where L is block lower triangular with an arrowhead shape.

    ``x`` is in block order (population values first, then each block level by level); ``perm_inv``
    puts the result back in the flat latent order. ``g_tril`` (G, G) is lower triangular; each block
    has ``coupling`` (n, k, G) and ``tril`` (n, k, k), lower triangular. ``nests`` couple a block to
    the block of its parent plate: ``(child, parent)`` block numbers, with ``nest_index`` (n_child,)
    the parent level of each child level and ``nest_weight`` (n_child, k_child, k_parent):

        z_child[i] = A[i] x_pop + B[i] x_parent[index[i]] + L[i] x_child[i]

    The nesting is a forest (each plate has at most one parent), so L stays triangular after
    ordering the blocks parents first, and its log-determinant is still the sum over the diagonal
    blocks'.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, loc, g_tril, couplings, trils, perm, perm_inv, nests=(), nest_index=(), nest_weight=()):
        self.loc, self.g_tril = loc, g_tril
        self.couplings, self.trils = tuple(couplings), tuple(trils)
        self.perm, self.perm_inv = perm, perm_inv
        self.nests, self.nest_index, self.nest_weight = tuple(nests), tuple(nest_index), tuple(nest_weight)

    def _split(self, v):
        G = self.g_tril.shape[-1]
        parts, start = [v[..., :G]], G
        for t in self.trils:
            n, k = t.shape[0], t.shape[-1]
            parts.append(v[..., start:start + n * k].reshape(v.shape[:-1] + (n, k)))
            start += n * k
        return parts

    def _cross(self, b, eg, eps):
        """The parts of block ``b``'s value that come from other blocks' noise: A x_pop + B x_parent."""
        a = self.couplings[b]
        n, k, G = a.shape
        # one (n k, G) matrix-vector product; the small k x k products as sums (a batched matmul of
        # thousands of tiny matrices is slow on CPU)
        z = jnp.einsum("mg,...g->...m", a.reshape(n * k, G), eg).reshape(eg.shape[:-1] + (n, k))
        for (child, parent), idx, w in zip(self.nests, self.nest_index, self.nest_weight):
            if child == b:
                z = z + (w * eps[parent][..., idx, None, :]).sum(-1)
        return z

    def __call__(self, x):
        eg, *eps = self._split(x)
        out = [jnp.einsum("ij,...j->...i", self.g_tril, eg)]
        for b, (t, e) in enumerate(zip(self.trils, eps)):
            z = self._cross(b, eg, eps) + (t * e[..., None, :]).sum(-1)
            out.append(z.reshape(z.shape[:-2] + (-1,)))
        return self.loc + jnp.concatenate(out, axis=-1)[..., self.perm_inv]

    def _order(self) -> list[int]:
        parent = {c: p for c, p in self.nests}
        depth = {}
        for b in range(len(self.trils)):
            d, q = 0, b
            while q in parent and d <= len(self.trils):
                q, d = parent[q], d + 1
            depth[b] = d
        return sorted(range(len(self.trils)), key=lambda b: depth[b])

    def _inverse(self, y):
        zg, *zs = self._split((y - self.loc)[..., self.perm])
        batch = zg.shape[:-1]
        eg = solve_triangular(self.g_tril, zg.reshape(-1, zg.shape[-1]).T, lower=True).T.reshape(zg.shape)
        eps: list = [None] * len(zs)
        for b in self._order():                                            # parents first
            t, z = self.trils[b], zs[b]
            r = z - self._cross(b, eg, eps)                                # (..., n, k)
            rr = jnp.moveaxis(r.reshape((-1,) + r.shape[-2:]), 0, -1)      # (n, k, B)
            eps[b] = jnp.moveaxis(solve_triangular(t, rr, lower=True), -1, 0).reshape(r.shape)
        return jnp.concatenate([eg] + [e.reshape(batch + (-1,)) for e in eps], axis=-1)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        ld = jnp.log(jnp.diagonal(self.g_tril)).sum()
        for t in self.trils:
            ld = ld + jnp.log(jnp.diagonal(t, axis1=-2, axis2=-1)).sum()
        return jnp.broadcast_to(ld, jnp.shape(x)[:-1])

    def tree_flatten(self):
        return ((self.loc, self.g_tril, self.couplings, self.trils, self.perm, self.perm_inv,
                 self.nest_index, self.nest_weight), self.nests)

    @classmethod
    def tree_unflatten(cls, nests, leaves):
        loc, g_tril, couplings, trils, perm, perm_inv, nest_index, nest_weight = leaves
        return cls(loc, g_tril, couplings, trils, perm, perm_inv, nests, nest_index, nest_weight)


def parent_maps(tree) -> dict[tuple[str, str], object]:
    """``{(child plate, parent plate): parent level of each child level}`` found anywhere in a
    model's keyword arguments under a ``parent`` mapping keyed ``"child>parent"`` (hbm's
    ``Consts.parent``, also inside non-linear models' per-parameter constants)."""
    found: dict[tuple[str, str], object] = {}

    def walk(x):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            x = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "parent" and isinstance(v, dict):
                    for key, arr in v.items():
                        if isinstance(key, str) and ">" in key:
                            child, parent = key.split(">", 1)
                            found.setdefault((child, parent), arr)
                else:
                    walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(tree)
    return found


def _scaled_unit_tril(scale, off):
    """Lower triangular with diagonal ``scale`` and rows ``scale_i * (off_i<, 1)`` (batched)."""
    k = scale.shape[-1]
    unit = jnp.tril(off, -1) + jnp.eye(k, dtype=off.dtype)
    return unit * scale[..., :, None]


class AutoHierarchicalNormal(AutoContinuous):
    """The ``structured`` guide: population block dense, each group's block dense and linearly
    coupled to the population block (see the module docstring).

    Parameters are in "row-scaled" form, as NumPyro's ``scaled_unit_lower_cholesky``: each row of
    the factor is a positive scale (softplus) times a row whose diagonal entry is 1, so the
    optimiser's steps on the off-diagonal terms mean the same whatever the parameter's scale.
    """

    scale_constraint = constraints.softplus_positive

    def __init__(self, model, *, prefix="auto", init_loc_fn=init_to_uniform, init_scale=0.1,
                 global_max: int = GLOBAL_MAX, promote_max: int = PROMOTE_MAX):
        if init_scale <= 0:
            raise ValueError(f"Expected init_scale > 0. but got {init_scale}")
        self._init_scale = init_scale
        self._global_max, self._promote_max = global_max, promote_max
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    def __call__(self, *args, **kwargs):
        # the parent maps of nested plates (arrays of this call: possibly tracers of the current trace)
        self._parents = parent_maps(kwargs)
        return super().__call__(*args, **kwargs)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        sites = []
        for name, init in self._init_locs.items():
            site = self.prototype_trace[name]
            shape = tuple(jnp.shape(init))
            axis, plates = -1, [(f.name, f.size) for f in site["cond_indep_stack"]]
            if plates and shape == tuple(jnp.shape(site["value"])):
                frame = max(site["cond_indep_stack"], key=lambda f: f.size)
                event_dim = site["fn"].event_dim
                a = len(shape) - event_dim + frame.dim
                if 0 <= a < len(shape) and shape[a] == frame.size:
                    axis, plates = a, [(frame.name, frame.size)]
            sites.append((name, shape, axis, plates))
        self.layout = plan_layout(sites, self._global_max, self._promote_max)
        perm = self.layout.perm
        assert perm.size == self.latent_dim and np.array_equal(np.sort(perm), np.arange(self.latent_dim))
        self._perm = perm
        self._perm_inv = np.argsort(perm).astype(np.int32)
        # nested plates that are both blocks: couple each child level to its parent level's block
        names = [name for name, _ in self.layout.blocks]
        self._nests = []
        for (child, parent), arr in parent_maps(kwargs).items():
            if child in names and parent in names and child != parent:
                c, p = names.index(child), names.index(parent)
                if (np.shape(arr) == (self.layout.blocks[c][1].shape[0],)
                        and all(q[0] != c for q in self._nests)):
                    self._nests.append((c, p, (child, parent)))

    @property
    def n_global(self) -> int:
        return int(self.layout.glob.size)

    def _get_posterior(self):
        p, G = self.prefix, self.n_global
        init = self._init_scale
        loc = numpyro.param(f"{p}_loc", self._init_latent)
        g_scale = numpyro.param(f"{p}_pop_scale", jnp.full((G,), init), constraint=self.scale_constraint)
        g_off = numpyro.param(f"{p}_pop_tril", jnp.zeros((G, G)))
        couplings, trils = [], []
        for i, (_, idx) in enumerate(self.layout.blocks):
            n, k = idx.shape
            scale = numpyro.param(f"{p}_block{i}_scale", jnp.full((n, k), init),
                                  constraint=self.scale_constraint)
            off = numpyro.param(f"{p}_block{i}_tril", jnp.zeros((n, k, k)))
            cpl = numpyro.param(f"{p}_block{i}_coupling", jnp.zeros((n, k, G)))
            trils.append(_scaled_unit_tril(scale, off))
            couplings.append(cpl * scale[..., None])
        nests, index, weight = [], [], []
        parents = getattr(self, "_parents", {})
        for c, q, key in self._nests:
            n, k = self.layout.blocks[c][1].shape
            kq = self.layout.blocks[q][1].shape[1]
            w = numpyro.param(f"{p}_block{c}_nest", jnp.zeros((n, k, kq)))
            scale = trils[c][..., jnp.arange(k), jnp.arange(k)]   # the block's row scales
            nests.append((c, q))
            index.append(jnp.asarray(parents[key]))
            weight.append(w * scale[..., None])
        transform = BlockArrowAffine(loc, _scaled_unit_tril(g_scale, g_off), couplings, trils,
                                     jnp.asarray(self._perm), jnp.asarray(self._perm_inv),
                                     nests, index, weight)
        return dist.TransformedDistribution(self.get_base_dist(), transform)

    def get_base_dist(self):
        return dist.Normal(jnp.zeros(self.latent_dim), 1).to_event(1)

    def get_transform(self, params):
        posterior = numpyro.handlers.substitute(self._get_posterior, params)()
        return posterior.transforms[0]

    def _marginal_sd(self, params):
        tr = self.get_transform(params)
        # z_block = A x_pop + B x_parent + L x_own with independent standard normal x's: the
        # marginal variances are the squared row norms of [A | B | L]
        sd = [jnp.linalg.norm(tr.g_tril, axis=-1)]
        for b, (a, t) in enumerate(zip(tr.couplings, tr.trils)):
            v = jnp.square(a).sum(-1) + jnp.square(t).sum(-1)
            for (c, _), w in zip(tr.nests, tr.nest_weight):
                if c == b:
                    v = v + jnp.square(w).sum(-1)
            sd.append(jnp.sqrt(v).reshape(-1))
        return jnp.concatenate(sd)[self._perm_inv]

    def median(self, params):
        return self._unpack_and_constrain(params[f"{self.prefix}_loc"], params)

    def quantiles(self, params, quantiles):
        loc = params[f"{self.prefix}_loc"]
        q = jnp.array(quantiles)[..., None]
        latent = dist.Normal(loc, self._marginal_sd(params)).icdf(q)
        return self._unpack_and_constrain(latent, params)


__all__ = ["GUIDES", "DEFAULT_GUIDE", "guide_factory", "AutoHierarchicalNormal", "BlockArrowAffine",
           "plan_layout", "parent_maps", "Layout"]
