"""The gray-box membership score of diffusion models: how well the denoiser denoises a photo.

A diffusion model fits the noise of its training images better than that of other images, and a
model with open weights gives this away for free. For a photo x0 and a timestep t (Ho et al.'s
forward process, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps):
  noise_error     mean over pixels of (eps^(x_t, t) - eps)^2: the denoising error of SecMI's
                  t-error (Duan et al., ICML 2023; there at t = 100) and of the loss attacks;
  predicted_norm  mean over pixels of eps^(x0, t)^2, the noise the network sees in the clean
                  photo (SimA, "one query": Vora et al. 2025; small t).
eps^ is the network's noise prediction (from its epsilon, x0 or v output, gmia.diffusion).
Lower values mean the photo looks like training data. A person's score is minus the mean over
their reference photos (never their training photos) and the timesteps, so larger means member,
as every score of gmia.attacks.

The noise of photo p at timestep t is drawn from fold_in(fold_in(key(seed), p), t) alone, so a
photo's errors do not depend on the batch, the chunking, the device count or the other
timesteps asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia import parallel
from gmia.diffusion.sampling import x0_and_noise
from gmia.models.noise_schedule import Schedule

VARIANT = "denoising"  # The name of this score among the membership attack's variants.
KINDS = ("noise_error", "predicted_norm")


def make_errors_fn(unet: Any, schedule: Schedule, timesteps: Sequence[int], kind: str):
  """Jitted `errors(variables, images f32[C, R, R, ch], photo_ids i32[C], seed) -> f32[C, T]`."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
  timesteps = np.asarray(timesteps, np.int64)
  train = schedule.num_train_timesteps
  if timesteps.ndim != 1 or not len(timesteps) or timesteps.min() < 0 or timesteps.max() >= train:
    raise ValueError(f"timesteps must be a non-empty list of integers in [0, {train}), got "
                     f"{timesteps.tolist()}")
  abar = schedule.alphas_cumprod.astype(np.float64)[timesteps]
  table = np.stack([timesteps, np.sqrt(abar), np.sqrt(1 - abar)], axis=1)

  @jax.jit
  def errors(variables, images, photo_ids, seed):
    keys = jax.vmap(lambda p: jax.random.fold_in(jax.random.key(seed), p))(photo_ids)

    def at(row):
      t, sqrt_abar, sqrt_1m_abar = row[0].astype(jnp.int32), row[1], row[2]
      t_batch = jnp.full((len(images),), t, jnp.int32)
      if kind == "predicted_norm":
        output = unet.apply(variables, images, t_batch)
        _, eps_hat = x0_and_noise(schedule, output, images, sqrt_abar, sqrt_1m_abar)
        return jnp.mean(jnp.square(eps_hat), axis=(1, 2, 3))
      eps = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, t),
                                                   images.shape[1:]))(keys)
      x_t = sqrt_abar * images + sqrt_1m_abar * eps
      output = unet.apply(variables, x_t, t_batch)
      _, eps_hat = x0_and_noise(schedule, output, x_t, sqrt_abar, sqrt_1m_abar)
      return jnp.mean(jnp.square(eps_hat - eps), axis=(1, 2, 3))

    return jax.lax.map(at, jnp.asarray(table, jnp.float32)).T

  return errors


def denoising_errors(unet: Any, variables: Any, schedule: Schedule, images: np.ndarray,
                     photo_ids: np.ndarray, timesteps: Sequence[int], *, seed: int,
                     kind: str = "noise_error", mesh: Mesh | None = None,
                     chunk: int = 64) -> np.ndarray:
  """f32[N, T]: each photo's error (`kind`, one of KINDS) at each timestep.

  images: f32[N, R, R, ch] in [-1, 1]; photo_ids: i64[N], what the noise of each photo is
  drawn from (with `seed`); streamed in chunks of `chunk` photos split over `mesh`'s data axis
  (one compilation for all of them). unet: anything with `apply(variables, x, t)`.
  """
  images = np.asarray(images, np.float32)
  photo_ids = np.asarray(photo_ids, np.int64)
  if images.ndim != 4 or len(photo_ids) != len(images) or photo_ids.ndim != 1:
    raise ValueError(f"images must be [N, R, R, C] with one photo id each, got images "
                     f"{list(images.shape)} and photo_ids {list(photo_ids.shape)}")
  mesh = mesh or parallel.make_mesh()
  errors = make_errors_fn(unet, schedule, timesteps, kind)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  devices = mesh.shape[parallel.DATA_AXIS]
  chunk = -(-min(chunk, max(len(images), 1)) // devices) * devices
  sharding = parallel.data_sharding(mesh)
  out = [np.zeros((0, len(timesteps)), np.float32)]
  for start in range(0, len(images), chunk):
    count = min(chunk, len(images) - start)
    parts = []
    for array in (images, photo_ids.astype(np.int32)):
      padded = np.zeros((chunk,) + array.shape[1:], array.dtype)
      padded[:count] = array[start:start + count]
      parts.append(jax.make_array_from_callback(padded.shape, sharding,
                                                lambda index, padded=padded: padded[index]))
    out.append(parallel.to_host(errors(variables, *parts, np.int32(seed)))[:count])
  return np.concatenate(out)


def person_scores(errors: np.ndarray, photo_person: np.ndarray, num_people: int) -> np.ndarray:
  """f64[num_people]: minus each person's mean error over their photos and the timesteps
  (larger = more likely a member). errors: f32[N, T]; photo_person: i64[N] in [0, num_people).
  Raises ValueError when a person has no photo."""
  errors = np.asarray(errors, np.float64)
  photo_person = np.asarray(photo_person, np.int64)
  if errors.ndim != 2 or photo_person.shape != errors.shape[:1]:
    raise ValueError(f"errors must be [N, T] with one person index per photo, got "
                     f"{list(errors.shape)} and {list(photo_person.shape)}")
  if len(photo_person) and (photo_person.min() < 0 or photo_person.max() >= num_people):
    raise ValueError(f"person indices must lie in [0, {num_people})")
  counts = np.bincount(photo_person, minlength=num_people)
  if np.any(counts == 0):
    raise ValueError(f"{int(np.sum(counts == 0))} of {num_people} people have no photo to score "
                     f"(e.g. person {int(np.argmin(counts))})")
  totals = np.bincount(photo_person, weights=errors.mean(axis=1), minlength=num_people)
  return -totals / counts
