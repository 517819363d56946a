"""Training inputs synthesised from a network alone, for zero-shot inversion (no real photos).

Two sources (Dong et al., arXiv 2107.06304, train their inverse blocks on both):
- noise images: Gaussian noise drawn at a random coarse resolution per image and bilinearly
  upsampled. White noise alone has no low frequencies, and faces are mostly low frequencies;
  noise at every scale lets the inverse blocks see both.
- DeepInversion images (Yin et al., CVPR 2020): noise images optimised so that the batch mean and
  variance at every BatchNorm input match the running statistics the network stores (its memory
  of its training data), with total variation and an l2 prior, and random jitter and flips at
  every step as DeepInversion does. The network has no class head to target here, so the
  statistics alone shape the images.

Both are pure functions of a key: a run resynthesises nothing on resume.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmia.inversion import priors

NOISE_LEVELS = 4  # Noise drawn at size, size/2, size/4 and size/8.


def noise_images(key: jax.Array, batch: int, size: int, *, scale: float = 0.5) -> jax.Array:
  """f32[batch, size, size, 3] in [-1, 1]: N(0, scale^2) noise at a random resolution per image
  (size / 2^k, k uniform in 0..3, at least 1 px), upsampled bilinearly to `size` and clipped."""
  level_key, *noise_keys = jax.random.split(key, NOISE_LEVELS + 1)
  levels = []
  for level, noise_key in enumerate(noise_keys):
    side = max(size >> level, 1)
    coarse = scale * jax.random.normal(noise_key, (batch, side, side, 3))
    levels.append(jax.image.resize(coarse, (batch, size, size, 3), "linear"))
  chosen = jax.random.randint(level_key, (batch,), 0, NOISE_LEVELS)
  images = jnp.stack(levels)[chosen, jnp.arange(batch)]
  return jnp.clip(images, -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SynthesisSettings:
  """DeepInversion hyperparameters.

  num_images: images synthesised (0: noise only), in batches of `batch_size` (the statistics
    are matched over each batch, as BatchNorm computed them in training).
  bn_weight, tv_weight, l2_weight: batch-norm statistics, total variation (power 2) and mean
    squared pixel weights.
  jitter: random shift in pixels (each axis, cyclic) applied before every step.
  noise_fraction: share of every training batch drawn as fresh noise images; the rest comes
    from the synthesised images (see `synthetic_batch`).
  """
  num_images: int = 256
  batch_size: int = 64
  num_steps: int = 200
  learning_rate: float = 0.1
  bn_weight: float = 1.0
  tv_weight: float = 1.0
  l2_weight: float = 0.01
  jitter: int = 2
  noise_fraction: float = 0.5

  def __post_init__(self):
    if self.num_images < 0 or self.num_steps < 0:
      raise ValueError("num_images and num_steps must be non-negative")
    if self.num_images and (self.batch_size < 2 or self.num_images % self.batch_size):
      raise ValueError(f"num_images ({self.num_images}) must be a multiple of batch_size "
                       f"({self.batch_size}), and batches need at least 2 images for statistics")
    if min(self.bn_weight, self.tv_weight, self.l2_weight, self.jitter) < 0:
      raise ValueError("synthesis weights and jitter must be non-negative")
    if not 0.0 <= self.noise_fraction <= 1.0:
      raise ValueError(f"noise_fraction must lie in [0, 1], got {self.noise_fraction}")


def _jitter(key: jax.Array, images: jax.Array, pixels: int) -> jax.Array:
  """Cyclic shift by up to `pixels` on each axis, then a horizontal flip with probability 1/2."""
  shift_key, flip_key = jax.random.split(key)
  shifts = jax.random.randint(shift_key, (2,), -pixels, pixels + 1)
  images = jnp.roll(images, (shifts[0], shifts[1]), axis=(1, 2))
  return jnp.where(jax.random.bernoulli(flip_key), images[:, :, ::-1], images)


def deep_inversion_images(model: nn.Module, variables: Mapping[str, Any], image_size: int,
                          settings: SynthesisSettings, key: jax.Array) -> jax.Array:
  """f32[num_images, S, S, 3] in [-1, 1]: images whose BatchNorm statistics in `model` (run in
  inference mode, whole network) match the stored running statistics. Adam, cosine-decayed
  learning rate, pixels clipped after every step.

  One jitted step per (batch, step), driven from Python: XLA:CPU runs convolution gradients
  inside a compiled loop (lax.scan / fori_loop) 25-40x slower than as separate calls.
  """
  if not settings.num_images:
    return jnp.zeros((0, image_size, image_size, 3), jnp.float32)
  tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, max(settings.num_steps, 1)))

  def loss_fn(images, step_key):
    shown = _jitter(step_key, images, settings.jitter)
    _, moments = priors.batch_norm_statistics(model, variables, shown, train=False)
    return (settings.bn_weight * priors.batch_norm_loss(moments)
            + settings.tv_weight * jnp.mean(priors.total_variation(images))
            + settings.l2_weight * jnp.mean(priors.l2_prior(images)))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(images, opt_state, step_key):
    grads = jax.grad(loss_fn)(images, step_key)
    updates, opt_state = tx.update(grads, opt_state, images)
    return jnp.clip(optax.apply_updates(images, updates), -1.0, 1.0), opt_state

  batches = []
  for batch_key in jax.random.split(key, settings.num_images // settings.batch_size):
    start_key, steps_key = jax.random.split(batch_key)
    images = noise_images(start_key, settings.batch_size, image_size)
    opt_state = tx.init(images)
    for step_key in jax.random.split(steps_key, settings.num_steps):
      images, opt_state = step(images, opt_state, step_key)
    batches.append(images)
  return jnp.concatenate(batches)


def synthetic_batch(key: jax.Array, pool: jax.Array, batch: int, image_size: int,
                    noise_fraction: float) -> jax.Array:
  """f32[batch, S, S, 3]: round(noise_fraction * batch) fresh noise images and the rest drawn
  (with replacement) from `pool` f32[N, S, S, 3] and mirrored at random. An empty pool gives
  noise only."""
  num_noise = batch if not len(pool) else int(round(noise_fraction * batch))
  noise_key, pick_key, flip_key = jax.random.split(key, 3)
  parts = [noise_images(noise_key, num_noise, image_size)] if num_noise else []
  if num_noise < batch:
    picked = pool[jax.random.randint(pick_key, (batch - num_noise,), 0, len(pool))]
    flips = jax.random.bernoulli(flip_key, 0.5, (batch - num_noise, 1, 1, 1))
    parts.append(jnp.where(flips, picked[:, :, ::-1], picked))
  return jnp.concatenate(parts)
