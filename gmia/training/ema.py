"""Exponential moving average of the generator weights (NVIDIA's G_ema, with ramp-up)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ema_beta(step: jax.Array, batch_size: int, ema_kimg: float,
             ema_rampup: float | None) -> jax.Array:
  """beta = 0.5 ** (batch / ema_nimg) with ema_nimg = ema_kimg * 1000, capped at
  cur_nimg * ema_rampup when ramping up (cur_nimg = step * batch, the images seen before this
  step): the half-life starts short and grows to ema_kimg thousand images."""
  ema_nimg = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
  if ema_rampup:
    cur_nimg = jnp.asarray(step, jnp.float32) * batch_size
    ema_nimg = jnp.minimum(ema_nimg, cur_nimg * ema_rampup)
  return 0.5 ** (batch_size / jnp.maximum(ema_nimg, 1e-8))


def ema_update(ema_params, params, beta: jax.Array):
  """ema <- beta * ema + (1 - beta) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: p + beta * (e - p), ema_params, params)
