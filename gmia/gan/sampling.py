"""Images from a StyleGAN2 generator: a jitted sampler and the first samples of a seed."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gmia import sources
from gmia.models import stylegan


def latents(seed: int, num: int, z_dim: int) -> jax.Array:
  """f32[num, z_dim]: the latents of samples 0 .. num-1 of a seed, as every source and command
  draws them (gmia.sources.latents; the training grids use config.seed)."""
  return sources.latents(seed, jnp.arange(num), (z_dim,))


def make_sampler(generator: stylegan.Generator) -> Callable[..., jax.Array]:
  """Jitted `sample(g_vars, z, key, truncation_psi=1, truncation_cutoff=None, noise_mode="const")`.

  g_vars: {"params", "buffers"}; z: f32[B, z_dim]; key: for noise_mode "random".
  Returns images f32[B, R, R, 3], about [-1, 1].
  """

  @functools.partial(jax.jit, static_argnames=("truncation_psi", "truncation_cutoff", "noise_mode"))
  def sample(g_vars, z, key, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const"):
    return generator.apply(g_vars, z, truncation_psi, truncation_cutoff, noise_mode,
                           rngs={"noise": key})

  return sample


def generate(generator: stylegan.Generator, g_vars: dict, *, seed: int, num: int,
             batch_size: int = 64, truncation_psi: float = 1.0,
             truncation_cutoff: int | None = None, noise_mode: str = "const") -> np.ndarray:
  """f32[num, R, R, 3] in about [-1, 1] from latents(seed, num), in fixed-size chunks (one
  compilation whatever `num`)."""
  if num <= 0:
    raise ValueError(f"number of images must be positive, got {num}")
  sample = make_sampler(generator)
  z = latents(seed, num, generator.z_dim)
  pad = -num % batch_size
  z = jnp.concatenate([z, jnp.zeros((pad, generator.z_dim), z.dtype)])
  noise_key = jax.random.fold_in(jax.random.key(seed), 1)
  chunks = [np.asarray(sample(g_vars, z[i:i + batch_size], jax.random.fold_in(noise_key, i),
                              truncation_psi, truncation_cutoff, noise_mode))
            for i in range(0, len(z), batch_size)]
  return np.concatenate(chunks)[:num]
