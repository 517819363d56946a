"""The Gaussian mechanism of person-level DP-SGD: clip each person's gradient, sum, add noise.

`clipped_sum` turns per-person gradients (a pytree whose leaves have a leading people axis,
empty slots holding zeros) into sum_p clip(g_p, C), and `add_noise` adds N(0, (sigma C)^2 I) to
it. The sum's L2 sensitivity to adding or removing one person is C whatever their photos, so the
two make a Gaussian mechanism of noise multiplier sigma, which `gmia.privacy.accounting`
composes. A sum over people sharded across devices is the psum of each device's clipped sum
(clipping is per person): `noisy_mean_gradient` runs the whole mechanism for a trainer's step.
Non-finite entries of a person's gradient are replaced before the norm is taken (as the
optimiser replaces them in an ordinary step), so no person escapes the bound through a NaN or
inf. Clipping and summing are optax's
`per_example_global_norm_clip`; the noise is one draw over the raveled tree, the same values on
any mesh for a given key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec as P

from gmia import parallel

PyTree = Any


def clipped_sum(per_person: PyTree, clip_norm: float) -> PyTree:
  """sum_p g_p * min(1, clip_norm / |g_p|) over the leading axis of every leaf, |g_p| being the
  global L2 norm of person p's gradient; clip_norm = inf sums without clipping."""
  finite = jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5),
                        per_person)
  summed, _ = optax.per_example_global_norm_clip(finite, clip_norm)
  return summed


def gaussian_noise(like: PyTree, key: jax.Array, stddev: float) -> PyTree:
  """Independent N(0, stddev^2) entries shaped and typed as `like`."""
  flat, unravel = ravel_pytree(like)
  return unravel(stddev * jax.random.normal(key, flat.shape, flat.dtype))


def add_noise(summed: PyTree, *, clip_norm: float, noise_multiplier: float,
              key: jax.Array) -> PyTree:
  """A `clipped_sum` plus Gaussian noise of standard deviation noise_multiplier * clip_norm.

  noise_multiplier 0 adds nothing (and draws nothing): with clip_norm = inf the result is the
  plain sum of the people's gradients, which is how the DP step is checked against the ordinary
  one.
  """
  if noise_multiplier < 0:
    raise ValueError(f"noise_multiplier must be non-negative, got {noise_multiplier}")
  if noise_multiplier == 0:
    return summed
  if not 0 < clip_norm < math.inf:
    raise ValueError(f"noise is scaled by clip_norm, which must be positive and finite, got "
                     f"{clip_norm}")
  noise = gaussian_noise(summed, key, noise_multiplier * clip_norm)
  return jax.tree.map(jnp.add, summed, noise)


def noisy_mean_gradient(person_loss: Callable[..., jax.Array], params: PyTree,
                        rows: Sequence[jax.Array], *, mesh: Mesh, clip_norm: float,
                        noise_multiplier: float, people_per_step: float,
                        key: jax.Array) -> PyTree:
  """The Gaussian mechanism over a step's people: (sum_p clip(grad person_loss(params, *rows[:,
  p]), C) + N(0, (sigma C)^2 I)) / people_per_step, the expected number of people a step samples.

  rows: arrays with a leading slot axis sharded over the mesh's `data` axis (a step's people
  batch, gmia.privacy.sampling, and any per-photo randomness drawn for it), passed to
  `person_loss(params, *slot)` one slot at a time. An empty slot must
  give a zero gradient (its mask zeroes its loss). Each device clips and sums the people it
  holds and the sums are psummed: under plain SPMD, XLA partitioned the per-person weight
  gradients (grouped convolutions) into an invalid program on 8 devices. The gradients are
  taken at a device-varying copy of the parameters: at the replicated ones, shard_map's
  autodiff would psum each person's gradient with the other devices' people before clipping.
  """
  def local_sum(params, *rows):
    params = jax.lax.pcast(params, parallel.DATA_AXIS, to="varying")
    per_person = jax.vmap(jax.grad(person_loss), in_axes=(None, *[0] * len(rows)))(params, *rows)
    return jax.lax.psum(clipped_sum(per_person, clip_norm), parallel.DATA_AXIS)

  data = P(parallel.DATA_AXIS)
  summed = jax.shard_map(local_sum, mesh=mesh, in_specs=(P(), *[data] * len(rows)),
                         out_specs=P())(params, *rows)
  noisy = add_noise(summed, clip_norm=clip_norm, noise_multiplier=noise_multiplier, key=key)
  return jax.tree.map(lambda g: g / people_per_step, noisy)
