"""Images from a denoising network: ancestral DDPM and deterministic DDIM, jitted and batched.

A sampler of n steps visits the timesteps diffusers' scheduler would (`schedule.inference_
timesteps`) and applies its update (diffusers' DDPMScheduler.step, DDIMScheduler.step with
eta = 0) with the network's prediction turned into a predicted x0 and noise:
- DDPM (Ho et al. 2020, eq. 7): x_prev = c0 x0^ + ct x_t + sigma z, from the posterior
  q(x_prev | x_t, x0^); sigma^2 the posterior variance (fixed_small) or beta (fixed_large);
  no noise at t = 0. With n < T steps, "prev" is the next visited timestep, as in diffusers.
- DDIM (Song et al. 2021, eq. 12, eta = 0): x_prev = sqrt(abar_prev) x0^ + sqrt(1 - abar_prev)
  eps^, prev = t - T // n (abar = 1 past the end when set_alpha_to_one).
x0^ is clipped to [-r, r] when the schedule says so (diffusers' clip_sample). The steps run as one
`lax.scan` inside one jitted program over the whole chunk.

Sample i is a pure function of (seed, i): with key_i = fold_in(key(seed), i), its starting noise
x_T ~ N(0, I) is drawn from key_i (the same draw as gmia.sources.base.latents(seed, [i], shape):
x_T is DDIM's latent) and DDPM's noise at the k-th step from fold_in(key_i, k). No draw depends
on the batch, so any subset of indices, in any chunking or device count, gives the same images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia import parallel
from gmia.models.noise_schedule import SAMPLERS, Schedule, inference_timesteps

# Columns of a plan's per-step coefficients.
SQRT_ABAR, SQRT_1M_ABAR, COEF_X0, COEF_XT, SIGMA = range(5)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """The steps of one sampler: timesteps i32[S] in visiting order and coefficients f32[S, 5]
  (sqrt(abar_t), sqrt(1 - abar_t), the update's weights of x0^ and x_t (DDIM: of x0^ and eps^),
  and the noise's sigma (0 for DDIM and at t = 0))."""
  sampler: str
  timesteps: np.ndarray
  coefficients: np.ndarray


def make_plan(schedule: Schedule, sampler: str, num_steps: int) -> Plan:
  """The timesteps and per-step coefficients of `sampler` ("ddpm" or "ddim") in `num_steps`
  steps, computed in float64 from the schedule's float32 abar."""
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
  abar = schedule.alphas_cumprod.astype(np.float64)
  timesteps = inference_timesteps(schedule, num_steps)
  train = schedule.num_train_timesteps
  if np.any(timesteps >= train) or np.any(timesteps < 0):
    raise ValueError(f"steps_offset {schedule.steps_offset} puts timesteps outside [0, {train})")
  a_t = abar[timesteps]
  if sampler == "ddim":
    prev = timesteps - train // num_steps
    a_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)],
                      1.0 if schedule.set_alpha_to_one else abar[0])
    coefficients = [np.sqrt(a_t), np.sqrt(1 - a_t), np.sqrt(a_prev), np.sqrt(1 - a_prev),
                    np.zeros_like(a_t)]
  else:
    prev = np.append(timesteps[1:], -1)
    a_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], 1.0)
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    variance = (np.maximum((1 - a_prev) / (1 - a_t) * beta, 1e-20)
                if schedule.variance_type == "fixed_small" else beta)
    coefficients = [np.sqrt(a_t), np.sqrt(1 - a_t), np.sqrt(a_prev) * beta / (1 - a_t),
                    np.sqrt(alpha) * (1 - a_prev) / (1 - a_t),
                    np.where(timesteps > 0, np.sqrt(variance), 0.0)]
  return Plan(sampler, timesteps.astype(np.int32),
              np.stack(coefficients, axis=1).astype(np.float32))


def x0_and_noise(schedule: Schedule, output: jax.Array, x_t: jax.Array, sqrt_abar: jax.Array,
                 sqrt_1m_abar: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x0^, eps^) from the network's `output` at x_t, for the schedule's prediction type."""
  if schedule.prediction_type == "epsilon":
    return (x_t - sqrt_1m_abar * output) / sqrt_abar, output
  if schedule.prediction_type == "sample":
    return output, (x_t - sqrt_abar * output) / sqrt_1m_abar
  return (sqrt_abar * x_t - sqrt_1m_abar * output,  # v_prediction
          sqrt_abar * output + sqrt_1m_abar * x_t)


def step(plan: Plan, schedule: Schedule, coefficients: jax.Array, output: jax.Array,
         x_t: jax.Array, noise: jax.Array) -> jax.Array:
  """One update of `plan`'s sampler: x_prev from the network's `output` at x_t, with
  `coefficients` one row of plan.coefficients and `noise` ~ N(0, I) (DDPM; DDIM ignores it)."""
  c = coefficients
  x0, eps = x0_and_noise(schedule, output, x_t, c[SQRT_ABAR], c[SQRT_1M_ABAR])
  if schedule.clip_sample:
    x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
  if plan.sampler == "ddim":
    return c[COEF_X0] * x0 + c[COEF_XT] * eps
  return c[COEF_X0] * x0 + c[COEF_XT] * x_t + c[SIGMA] * noise


def sample_keys(seed: jax.Array | int, indices: jax.Array) -> jax.Array:
  """key_i = fold_in(key(seed), i) for each index: everything random about sample i."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


def make_generate(unet: Any, schedule: Schedule, *, sampler: str, num_steps: int,
                  resolution: int, channels: int = 3) -> Callable[..., jax.Array]:
  """Jitted `generate(variables, indices i32[C], seed) -> f32[C, R, R, channels] in [-1, 1]`:
  the samples of those indices, as sharded as `indices` (the batch is split like them).

  unet: anything with `apply(variables, x f32[B, R, R, channels], t i32[B]) -> output`.
  """
  plan = make_plan(schedule, sampler, num_steps)
  shape = (resolution, resolution, channels)

  @jax.jit
  def generate(variables, indices, seed):
    keys = sample_keys(seed, indices)
    x = jax.vmap(lambda key: jax.random.normal(key, shape))(keys)

    def body(x, step_inputs):
      k, t, coefficients = step_inputs
      output = unet.apply(variables, x, jnp.full((x.shape[0],), t, jnp.int32))
      noise = (jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, k), shape))(keys)
               if plan.sampler == "ddpm" else None)
      return step(plan, schedule, coefficients, output, x, noise).astype(x.dtype), None

    steps = (jnp.arange(num_steps), jnp.asarray(plan.timesteps), jnp.asarray(plan.coefficients))
    x, _ = jax.lax.scan(body, x, steps)
    return jnp.clip(x, -1.0, 1.0)

  return generate


def make_sampler(unet: Any, variables: Any, schedule: Schedule, *, sampler: str = "ddim",
                 num_steps: int = 50, resolution: int, channels: int = 3,
                 mesh: Mesh | None = None) -> Callable[[np.ndarray, int], jax.Array]:
  """`sample(indices i64[C], seed) -> f32[C, R, R, channels] in [-1, 1]`: sample i of
  (seed, i), the chunk split over `mesh`'s data axis (default: every device), one compilation
  for every seed and every chunk of the same size.

  unet: e.g. gmia.models.unet.UNet, or anything with `apply(variables, x, t)`; variables are
  placed on the mesh once, replicated.
  """
  mesh = mesh or parallel.make_mesh()
  generate = make_generate(unet, schedule, sampler=sampler, num_steps=num_steps,
                           resolution=resolution, channels=channels)
  variables = jax.device_put(variables, parallel.replicated(mesh))

  def sample(indices: np.ndarray, seed: int) -> jax.Array:
    return parallel.map_padded(functools.partial(generate, variables, seed=np.int32(seed)),
                               indices, mesh)

  return sample
