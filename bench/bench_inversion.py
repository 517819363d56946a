"""Latent projection throughput: optimisation steps/s for a batch of 8 targets at 32 and 64 px.

  python bench/bench_inversion.py [--channel_base=2048] [--channel_max=64] [--steps=50]

Randomly initialised generators (speed does not depend on training), W+ with optimised noise
maps (the most work per step). Prints steps/s and target-steps/s of the batched projection (one
jitted scan vmapped over 8 targets) against the peer: the same 8 targets projected one at a time
with the same compiled scan at batch 1.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from gmia.inversion import latent
from gmia.models import stylegan

_BASE = flags.DEFINE_integer("channel_base", 2048, "Generator channel_base.")
_MAX = flags.DEFINE_integer("channel_max", 64, "Generator channel_max.")
_STEPS = flags.DEFINE_integer("steps", 50, "Projection steps per timed call.")
_BATCH = flags.DEFINE_integer("batch", 8, "Targets per batch.")


def timed(fn, *args) -> float:
  """Seconds of one call after a compiling call."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main(argv):
  del argv
  steps, batch = _STEPS.value, _BATCH.value
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; W+, noise maps, "
        f"{steps} steps, channel_base {_BASE.value}, channel_max {_MAX.value}")
  for resolution in (32, 64):
    generator = stylegan.Generator(z_dim=128, w_dim=128, img_resolution=resolution,
                                   mapping_layers=2, channel_base=_BASE.value,
                                   channel_max=_MAX.value)
    g_vars = jax.jit(lambda g=generator: g.init(
        {"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros((1, 128))))()
    targets = jax.random.uniform(jax.random.key(2), (batch, resolution, resolution, 3),
                                 minval=-1, maxval=1)
    keys = latent.target_keys(0, range(batch))
    project = latent.make_projector(generator, latent.ProjectionSettings(
        num_steps=steps, w_plus=True, w_avg_samples=1000))
    batched = timed(project, g_vars, None, targets, keys)
    single = timed(lambda: [project(g_vars, None, targets[i:i + 1], keys[i:i + 1])
                            for i in range(batch)])
    print(f"{resolution:3d} px: batched {steps / batched:8.1f} steps/s "
          f"({batch * steps / batched:8.1f} target-steps/s); one at a time "
          f"{batch * steps / single:8.1f} target-steps/s; ratio {single / batched:5.2f}x")


if __name__ == "__main__":
  app.run(main)
