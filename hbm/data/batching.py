"""Minibatches: ``batch_size: B`` fits by subsampled SVI, rows streamed from host memory.

Each step the model sees a batch of B rows (the flat layout of
``hbm.data.encode``, the same arrays as ``rows``) and ``scale = N / B``, so the
scaled batch log-likelihood is an unbiased estimate of the full one
(``Likelihood.total`` multiplies by ``scale``).

How rows get there:

- The host keeps every row (NumPy). A *chunk* of C rows (all N when they fit
  in ``CHUNK_ROWS``, else a window of a running random permutation) is put on
  the devices, split into one part per device, each part followed by a copy
  of its first rows so that windows can wrap around.
- Each step draws a random offset (from the step's random key) and takes the
  B contiguous rows starting there in every device's part (cyclically): every
  row of the chunk is in the batch with the same probability, so the estimate
  is unbiased. No gather: a dynamic slice.
- When the chunk is not all the data, chunk b of the fit is put in place before
  block b of steps (``kwargs_at``). Chunk b holds positions ``[b C, (b + 1) C)`` of
  the endless sequence of the rows' epoch permutations (epoch e permuted by
  ``seed`` and e alone), so it is a function of the block number: a fit resumed
  from a checkpoint sees the same chunks as one that never stopped. The next one
  is drawn and copied to the devices by a background thread while the current
  block runs.

The model function for fitting is ``batched(model)``: called with
``rows=Batch(chunk, stream)`` (``hbm.data.arrays``) it picks the batch; called with
plain rows it is the model itself (posterior summaries, simulation).
"""
from __future__ import annotations

import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dataclasses import replace

from hbm.data.arrays import Batch, Consts, n_rows
from hbm.errors import HbmError

CHUNK_ROWS = 1 << 22     # rows kept on the devices at a time (when the data has more)


class BatchStream:
    """The host rows, the chunk on the devices, and the next chunk being prepared."""

    def __init__(self, rows, consts: Consts, batch_size: int, seed: int = 0, mesh=None,
                 chunk_rows: int | None = None):
        self.rows = rows                        # flat NumPy rows (with lp0)
        self.n = n_rows(rows)
        self.mesh = mesh
        self.devices = 1 if mesh is None else mesh.devices.size
        d = self.devices
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise HbmError(f"batch_size must be at least 1, got {batch_size}", where="batch_size")
        self.per_device = -(-min(self.batch_size, self.n) // d)          # Bd
        chunk = max(chunk_rows or CHUNK_ROWS, self.per_device * d)
        self.whole = chunk >= self.n
        self.chunk_per_device = -(-self.n // d) if self.whole else chunk // d   # Cd
        self.chunk_real = self.n if self.whole else self.chunk_per_device * d
        self.scale = float(self.n / self.chunk_real * self.chunk_per_device / self.per_device)
        self._seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}
        self._consts = consts
        self.block = 0                           # the block whose chunk is in place
        self._current = self._make_chunk(0)
        self._next: tuple[int, object] | None = None
        self._thread: threading.Thread | None = None
        self.chunks = 1

    # ---- what the engine sees
    def model_kwargs(self) -> dict:
        return {"rows": Batch(self._current, self), "consts": self._consts}

    def kwargs_at(self, block: int) -> dict | None:
        """The model's keyword arguments with chunk ``block`` in place; None when the chunk is all
        the data or already in place (``hbm.engines.base.Batches``)."""
        if self.whole or block == self.block:
            return None
        self.chunk_at(block)
        return self.model_kwargs()

    def next_chunk(self):
        """The chunk of the next block, put in place."""
        return self.chunk_at(self.block + 1)

    def chunk_at(self, block: int):
        """Put chunk ``block`` in place (the prefetched one when it is that) and start preparing
        the one after."""
        if self.whole or block == self.block:
            return self._current
        if self._thread is not None:
            self._thread.join()
        nxt, self._next, self._thread = self._next, None, None
        self._current = nxt[1] if nxt is not None and nxt[0] == block else self._make_chunk(block)
        self.block = block
        self.chunks += 1
        self._prefetch(block + 1)
        return self._current

    @property
    def chunk(self):
        return self._current

    # ---- chunks
    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def _indices(self, block: int) -> np.ndarray:
        """Rows of chunk ``block``: its window of the concatenated epoch permutations."""
        if self.whole:
            return self._perm(0)
        out, pos, need = [], block * self.chunk_real, self.chunk_real
        while need:
            epoch, at = divmod(pos, self.n)
            take = min(need, self.n - at)
            out.append(self._perm(epoch)[at:at + take])
            pos += take
            need -= take
        return np.concatenate(out)

    def _make_chunk(self, block: int):
        idx = self._indices(block)
        d, cd, bd = self.devices, self.chunk_per_device, self.per_device
        mask = np.zeros(d * cd, bool)
        mask[: len(idx)] = True
        pos = np.zeros(d * cd, np.int64)
        pos[: len(idx)] = idx

        def part(a):
            a = np.asarray(a)[pos]
            a[~mask] = 0                                          # padding: zeros, masked (as hbm.data.layout)
            a = a.reshape((d, cd) + np.shape(a)[1:])
            wrap = np.concatenate([a, a[:, :bd]], axis=1)        # windows may run past the end
            return self._put(wrap)

        rows = self.rows
        if rows.mask is not None:      # a row's own mask travels with it; padding is masked on top
            mask = mask & np.asarray(rows.mask)[pos]
        chunk = jax.tree.map(part, replace(rows, mask=None))
        return chunk if mask.all() else replace(chunk, mask=part(mask))

    def _put(self, a: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(a)
        from jax.sharding import NamedSharding, PartitionSpec as P
        return jax.device_put(a, NamedSharding(self.mesh, P("data")))

    def _prefetch(self, block: int) -> None:
        def work():
            chunk = self._make_chunk(block)
            jax.block_until_ready(chunk)
            self._next = (block, chunk)
        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()


def window(stream: BatchStream, chunk, start):
    """The batch at ``start``: ``per_device`` rows from there in every device's part of the chunk."""
    bd = stream.per_device

    def take(a):
        w = jax.lax.dynamic_slice_in_dim(a, start, bd, axis=1)
        return w.reshape((a.shape[0] * bd,) + a.shape[2:])
    return jax.tree.map(take, chunk)


def batched(model: Callable) -> Callable:
    """The model for minibatch fitting (see the module docstring)."""
    import numpyro

    def model_fn(rows, consts, mode="fit", scale=None):
        if isinstance(rows, Batch):
            stream = rows.stream
            key = numpyro.prng_key()
            cd = stream.chunk_per_device
            start = jax.random.randint(key, (), 0, cd) if key is not None and cd > 1 else 0
            return model(window(stream, rows.chunk, start), consts, mode, stream.scale)
        return model(rows, consts, mode, scale)
    return model_fn
