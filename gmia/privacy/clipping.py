"""The Gaussian mechanism of person-level DP-SGD: clip each person's gradient, sum, add noise.

`clipped_sum` turns per-person gradients (a pytree whose leaves have a leading people axis,
empty slots holding zeros) into sum_p clip(g_p, C), and `add_noise` adds N(0, (sigma C)^2 I) to
it. The sum's L2 sensitivity to adding or removing one person is C whatever their photos, so the
two make a Gaussian mechanism of noise multiplier sigma, which `gmia.privacy.accounting`
composes. A sum over people sharded across devices is the psum of each device's clipped sum
(clipping is per person), which is how the GAN step runs it. Non-finite entries of a person's
gradient are replaced before the norm is taken (as the optimiser replaces them in an ordinary
step), so no person escapes the bound through a NaN or inf. Clipping and summing are optax's
`per_example_global_norm_clip`; the noise is one draw over the raveled tree, the same values on
any mesh for a given key.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

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
