"""Images from a trained generator: fixed latents, a jitted sampler, loading from a workdir."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmia.checkpoint import Checkpointer
from gmia.gan import train_step
from gmia.models import stylegan


def latents(seed: int, num: int, z_dim: int) -> jax.Array:
  """f32[num, z_dim]: the latents a seed stands for (the training grids use config.seed)."""
  return jax.random.normal(jax.random.key(seed), (num, z_dim))


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


def load_generator(
    workdir: str, step: int | None = None,
    use_ema: bool = True) -> tuple[stylegan.Generator, dict, ml_collections.ConfigDict]:
  """Restores (generator, g_vars, config) from a training workdir's checkpoint (latest by default).

  g_vars = {"params": EMA (or raw) generator weights, "buffers": w_avg and noise_const}.
  """
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    state, meta = ckpt.restore_replicated(step, kind="gan")
  finally:
    ckpt.close()
  config = ml_collections.ConfigDict(meta["config"])
  generator = train_step.build_models(config).generator
  params = state["g_ema"] if use_ema else state["g_params"]
  return generator, {"params": params, "buffers": state["g_buffers"]}, config
