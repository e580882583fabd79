"""Devices: the mesh the chains are split across, placement and fetching back."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


CHAIN_AXIS = "chains"


# --------------------------------------------------------------------------------
# Devices.
# --------------------------------------------------------------------------------


def mesh_size(num_chains: int, num_devices: int, num_processes: int) -> int:
    """How many devices the chains are split across: all of them when they divide
    `num_chains`, else (on one host) the largest number that does."""
    if num_devices <= 1 or num_chains % num_devices == 0:
        return num_devices
    if num_processes > 1:
        raise ValueError(
            f"`num_chains={num_chains}` must be a multiple of the number of devices "
            f"({num_devices}) when running on several hosts."
        )
    return max(d for d in range(1, num_devices + 1) if num_chains % d == 0)


def choose_mesh(num_chains: int) -> Mesh | None:
    devices = jax.devices()
    count = mesh_size(num_chains, len(devices), jax.process_count())
    if count <= 1:
        return None
    return Mesh(np.asarray(devices[:count]), (CHAIN_AXIS,))


def place_on_mesh(tree, mesh: Mesh | None, batched: bool):
    """Put the arrays of `tree` on the mesh: split along the leading (chain) axis
    when `batched`, else replicated. Works for several processes as well, as every
    process holds the whole host array."""
    if mesh is None:
        return jtu.tree_map(lambda x: jnp.asarray(x) if eqx.is_array(x) else x, tree)
    sharding = NamedSharding(
        mesh, PartitionSpec(CHAIN_AXIS) if batched else PartitionSpec()
    )

    def place(x):
        if not eqx.is_array(x):
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jtu.tree_map(place, tree)


def to_host(tree):
    def fetch(x):
        if not isinstance(x, jax.Array):
            return x if not eqx.is_array(x) else np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jtu.tree_map(fetch, tree)


def wait_for_every_process(name: str) -> None:
    """A barrier across the processes of a multi-process run (nothing in a run of
    one process): no process passes it before every process has reached it."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
