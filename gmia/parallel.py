"""Device meshes and shardings shared by trainers, attacks and kernels.

Everything runs over a `jax.sharding.Mesh`: one CPU, N simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), a GPU, or a multi-host TPU slice.
Batches are split over the `data` axis; parameters are replicated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as ocp_multihost

DATA_AXIS = "data"


# The three variables of an explicitly configured job (BUILD.md); jax itself reads none of them.
JOB_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _detected_cluster() -> str | None:
  """The multi-process environment jax.distributed detects by itself, if any."""
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    return "Cloud TPU pod slice"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return "SLURM"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  return None


def initialize_distributed() -> None:
  """Joins a multi-process job when one is configured; a no-op on a single process.

  The job is JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID, all three (see BUILD.md), or what jax detects itself (a Cloud TPU pod slice,
  SLURM, Open MPI). CPU processes exchange collectives over gloo (unless
  JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise), so a CPU-only job of several processes
  runs too. When a process dies, the others stop once its heartbeats have been missing for
  GMIA_HEARTBEAT_TIMEOUT seconds (default 100, jax's). Process 0 logs the job's size once.
  """
  given = [name for name in JOB_VARIABLES if name in os.environ]
  cluster = _detected_cluster()
  if not given and cluster is None:
    return
  if given and len(given) != len(JOB_VARIABLES):
    missing = [name for name in JOB_VARIABLES if name not in given]
    raise ValueError(f"a multi-process job needs {', '.join(JOB_VARIABLES)}; {', '.join(given)} "
                     f"set but not {', '.join(missing)}")
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ:
    # CPU programs run one after the other: dispatched asynchronously, a training step's gloo
    # collectives could still be running when the next program's (the equality check of a host
    # value put on every process) start, and under load the two processes hung in them.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  timeouts = {"heartbeat_timeout_seconds": int(os.environ.get("GMIA_HEARTBEAT_TIMEOUT", 100))}
  if given:
    try:
      processes, process = (int(os.environ[name]) for name in JOB_VARIABLES[1:])
    except ValueError:
      raise ValueError(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got "
                       f"{os.environ['JAX_NUM_PROCESSES']!r} and "
                       f"{os.environ['JAX_PROCESS_ID']!r}") from None
    if not 0 <= process < processes:
      raise ValueError(f"JAX_PROCESS_ID={process} is not one of the {processes} processes")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=processes, process_id=process, **timeouts)
  else:
    jax.distributed.initialize(**timeouts)
  # The first collective sets up the CPU collectives' context, which the processes must reach
  # within 30 s of each other: here, at once, rather than wherever their work first meets.
  multihost_utils.sync_global_devices("gmia joined")
  if jax.process_index() == 0:
    logging.info("joined a job of %d processes (%s): %d devices in all, %d per process",
                 jax.process_count(), cluster or "JAX_COORDINATOR_ADDRESS",
                 jax.device_count(), jax.local_device_count())


def barrier(name: str, timeout_s: int = 24 * 3600) -> None:
  """Waits until every process of the job reaches the barrier `name` (a no-op on one process):
  a wait on the job's coordinator, so one process may work for hours (prepare a data set) while
  the others wait. Every process must pass the same names in the same order."""
  if jax.process_count() > 1:
    _barriers[name] = _barriers.get(name, 0) + 1
    ocp_multihost.get_barrier_sync_fn()(key=f"gmia:{name}:{_barriers[name]}",
                                        timeout_ms=timeout_s * 1000)


_barriers: dict[str, int] = {}


def compiled_together(fn: Any, *args: Any, name: str) -> Any:
  """The jitted `fn` compiled for `args`, once every process of the job has compiled it: the
  first run of a program sets up its CPU collectives, which the processes must reach within 30 s
  of each other, and one of them may take longer than that to compile (a loaded host)."""
  compiled = fn.lower(*args).compile()
  barrier(f"compiled {name}")
  return compiled


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


def map_chunks(fn: Callable[[Any, jax.Array], jax.Array], params: Any, items: np.ndarray,
               mesh: Mesh, chunk: int = 256) -> np.ndarray:
  """fn(params, batch) over `items` [N, ...] in fixed-size chunks split over the mesh's `data`
  axis, the last one padded with zeros, so a jitted `fn` compiles once; returns the outputs of
  the N real rows, on the host. Every process holds all items; each device takes its rows."""
  devices = mesh.shape[DATA_AXIS]
  chunk = -(-chunk // devices) * devices
  out = [np.zeros((0,) + shape.shape[1:], shape.dtype) for shape in [jax.eval_shape(
      fn, params, jax.ShapeDtypeStruct((chunk,) + items.shape[1:], items.dtype))]]
  for start in range(0, len(items), chunk):
    part = items[start:start + chunk]
    padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], part.dtype)])
    batch = jax.make_array_from_callback(padded.shape, data_sharding(mesh),
                                         lambda index, padded=padded: padded[index])
    out.append(to_host(fn(params, batch))[:len(part)])
  return np.concatenate(out)


def map_padded(fn: Callable[[jax.Array], Any], indices: np.ndarray, mesh: Mesh) -> Any:
  """fn(indices) with indices i64[C] padded (by repeating the last) to a multiple of the
  mesh's devices and split over its `data` axis; the outputs' padding rows are cut off."""
  indices = np.asarray(indices, np.int64)
  devices = mesh.shape[DATA_AXIS]
  pad = -len(indices) % devices
  padded = np.concatenate([indices, np.full(pad, indices[-1] if len(indices) else 0)])
  out = fn(jax.device_put(padded.astype(np.int32), data_sharding(mesh)))
  return jax.tree.map(lambda x: x[:len(indices)], out)


def to_host(tree: Any) -> Any:
  """The values of (global) arrays on this host, whole: numpy arrays in every process of a
  multi-process job too (gathered from the processes that hold their parts)."""
  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(gather, tree)
