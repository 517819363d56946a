"""Losses and image priors of optimisation-based inversion.

Total variation and the l2 norm prior are Mahendran & Vedaldi's (CVPR 2015); batch-norm statistics
matching is DeepInversion's (Yin et al., CVPR 2020): the batch mean and variance at every BatchNorm
input are pulled towards the running statistics the network stores, so reconstructions look like
the network's training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")


def total_variation(images: jax.Array, *, power: float = 2.0) -> jax.Array:
  """Anisotropic total variation f32[B] of images f32[B, H, W, C].

  mean |x[i+1, j] - x[i, j]|^p + mean |x[i, j+1] - x[i, j]|^p (power 2: smoothness; power 1:
  edge-preserving, DeepInversion's l1 variant). Means, not sums, so weights carry across sizes.
  """
  _check_images(images)
  if images.shape[1] < 2 or images.shape[2] < 2:
    raise ValueError(f"total variation needs images of at least 2x2, got {images.shape[1:3]}")
  down = jnp.abs(images[:, 1:] - images[:, :-1]) ** power
  right = jnp.abs(images[:, :, 1:] - images[:, :, :-1]) ** power
  return jnp.mean(down, axis=(1, 2, 3)) + jnp.mean(right, axis=(1, 2, 3))


def l2_prior(images: jax.Array) -> jax.Array:
  """Mean squared pixel value f32[B] of images f32[B, H, W, C] in [-1, 1]: keeps pixels in range."""
  _check_images(images)
  return jnp.mean(jnp.square(images), axis=(1, 2, 3))


def feature_distance(features: jax.Array, targets: jax.Array) -> jax.Array:
  """Relative squared error f32[B]: ||f - t||^2 / ||t||^2 per sample, features f32[B, ...].

  Normalised by the target's energy (Mahendran & Vedaldi), so layers of any scale weigh alike.
  """
  if features.shape != targets.shape:
    raise ValueError(f"features {features.shape} and targets {targets.shape} differ in shape")
  axes = tuple(range(1, features.ndim))
  error = jnp.sum(jnp.square(features - targets), axis=axes)
  return error / jnp.maximum(jnp.sum(jnp.square(targets), axis=axes), 1e-12)


def batch_norm_statistics(module: nn.Module, variables: dict[str, Any], *args: Any,
                          **kwargs: Any) -> tuple[Any, list[tuple[jax.Array, jax.Array,
                                                                  jax.Array, jax.Array]]]:
  """Runs `module.apply(variables, *args, **kwargs)` and records every BatchNorm's input moments.

  Returns (output, [(batch mean, batch variance, running mean, running var), ...]) in call
  order; moments over all axes but the last (batch and positions), variances biased as BatchNorm
  computes them. Apply in inference mode, as DeepInversion does.
  """
  moments = []

  def record(next_fun, call_args, call_kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      x = call_args[0].astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axis=axes)
      var = jnp.mean(jnp.square(x - mean), axis=axes)
      stats = context.module.variables["batch_stats"]
      moments.append((mean, var, stats["mean"], stats["var"]))
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(record):
    output = module.apply(variables, *args, **kwargs)
  return output, moments


def batch_norm_loss(moments: Sequence[tuple[jax.Array, jax.Array, jax.Array, jax.Array]]
                    ) -> jax.Array:
  """DeepInversion's R_feature: sum over layers of ||mean - running mean||_2 + ||var - running
  var||_2, for the moments of `batch_norm_statistics`. A scalar."""
  if not moments:
    raise ValueError("no BatchNorm layer ran: nothing to match")
  return sum(jnp.linalg.norm(mean - run_mean) + jnp.linalg.norm(var - run_var)
             for mean, var, run_mean, run_var in moments)
