"""Devices: the 1-D ``data`` mesh and placing the fit arrays on it.

Row arrays are split on the mesh's ``data`` axis (their axis 0), padded to a
multiple of the device count with the padding masked; constants (parent
maps, layout patterns) are replicated. With one device nothing is sharded and
the likelihood runs without ``shard_map``. With several processes
(``hbm.pipeline.distributed``) each process passes its own rows, padded to the same
length, and the arrays are assembled into global ones.
"""
from __future__ import annotations

import jax
import numpy as np

from hbm.errors import HbmError
from hbm.data.arrays import Consts
from hbm.data.layout import pad_rows


def resolve_devices(devices) -> int:
    """How many devices to shard over: ``auto`` takes every device (of every process)."""
    available = jax.device_count()
    if devices in (None, "auto"):
        return available
    n = int(devices)
    if n > available:
        raise HbmError(f"devices: {n} asked for, but only {available} available",
                       where="devices", hint="on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                       "before starting, or use devices: auto")
    if jax.process_count() > 1 and n != available:
        raise HbmError(f"devices: {n} asked for; a run over {jax.process_count()} processes uses all "
                       f"{available} devices", where="devices", hint="use devices: auto")
    return n


def data_mesh(n_dev: int):
    """A 1-D mesh named ``data`` over the first ``n_dev`` devices (Auto axes: ``shard_map`` on plain
    arrays needs them in jax 0.10)."""
    from jax.sharding import AxisType
    return jax.make_mesh((n_dev,), ("data",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:n_dev])


def place(rows, consts: Consts, mesh, local_length: int | None = None):
    """Device arrays for ``rows`` (:class:`hbm.data.arrays.Rows` or ``NonlinearRows``, sharded on
    axis 0 over ``mesh``; None: none) and ``consts`` (replicated).

    ``rows`` are this process's rows; with several processes every process passes the same
    ``local_length`` (its rows are padded to it) so the global arrays line up."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    if mesh is None:
        return jax.tree.map(jnp.asarray, rows), jax.tree.map(jnp.asarray, consts)
    local_devices = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
    if rows is not None:
        rows = pad_rows(rows, local_devices, local_length)
    shard, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return (jax.tree.map(lambda a: jax.device_put(np.asarray(a), shard), rows),
                jax.tree.map(lambda a: jax.device_put(np.asarray(a), rep), consts))

    def glob(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(shard, a, (a.shape[0] * jax.process_count(),) + a.shape[1:])
    return (jax.tree.map(glob, rows),
            jax.tree.map(lambda a: jax.make_array_from_process_local_data(rep, np.asarray(a)), consts))


def place_consts(consts: Consts, mesh) -> Consts:
    """``consts`` on the devices of ``mesh`` (replicated), or on the default device."""
    return place(None, consts, mesh)[1]

