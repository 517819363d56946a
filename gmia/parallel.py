"""Device meshes and shardings shared by trainers, attacks and kernels.

Everything runs over a `jax.sharding.Mesh`: one CPU, N simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), a GPU, or a multi-host TPU slice.
Batches are split over the `data` axis; parameters are replicated.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Joins a multi-host job when one is configured; a no-op on a single process.

  Cloud TPU pods are detected by JAX itself; elsewhere set JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (see BUILD.md).
  """
  on_tpu_pod = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  if on_tpu_pod or "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis `data` over the first `num_devices` devices (default: all)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the `data` axis of `mesh`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated over `mesh`."""
  return NamedSharding(mesh, P())


def check_divisible(global_batch: int, mesh: Mesh) -> None:
  """Raises a clear error when a global batch cannot be split evenly over the data axis."""
  n = mesh.shape[DATA_AXIS]
  if global_batch % n:
    raise ValueError(f"batch size {global_batch} is not divisible by the {n} devices of the mesh")


def shard_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Assembles this process's slice of a batch into a global array sharded on `data`."""
  return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch)
