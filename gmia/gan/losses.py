"""StyleGAN2 losses and regularisers (NVIDIA's loss.py): logistic loss, R1, path length."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating logistic loss: mean softplus(-D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Logistic loss: mean softplus(D(G(z))) + mean softplus(-D(x))."""
  return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def r1_penalty(discriminator: Callable[[jax.Array], jax.Array],
               reals: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Squared gradient norm of D at real images: sum_{h,w,c} (d sum_b D(x)_b / d x)^2.

  discriminator: f32[B, H, W, C] -> logits f32[B]. Returns (penalty f32[B], logits f32[B]); the
  R1 loss is gamma / 2 * penalty. The batch-sum gradient is exactly NVIDIA's, which includes the
  coupling between samples through the minibatch-std layer.
  """
  logits, vjp = jax.vjp(discriminator, reals)
  (grads,) = vjp(jnp.ones_like(logits))
  return jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))), logits


def path_length_penalty(synthesis: Callable[[jax.Array], jax.Array], ws: jax.Array,
                        key: jax.Array, pl_mean: jax.Array,
                        decay: float) -> tuple[jax.Array, jax.Array]:
  """Path-length regulariser: (|J_w^T y| - a)^2 with y ~ N(0, I) / sqrt(H*W).

  synthesis: ws f32[B, num_ws, w_dim] -> images f32[B, H, W, C]. Lengths are
  sqrt(mean_ws sum_w_dim grad^2); a = pl_mean moved towards their batch mean by `decay` (kept
  differentiable, as in NVIDIA's code). Returns (penalty f32[B], new pl_mean, no gradient).
  """
  images, vjp = jax.vjp(synthesis, ws)
  noise = jax.random.normal(key, images.shape, images.dtype) / jnp.sqrt(
      images.shape[1] * images.shape[2])
  (grads,) = vjp(noise)
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))
  new_mean = pl_mean + decay * (jnp.mean(lengths) - pl_mean)
  return jnp.square(lengths - new_mean), jax.lax.stop_gradient(new_mean)
