"""Noise schedules of DDPM as diffusers defines them, and the timesteps a sampler visits.

The forward process noises an image x0 at timestep t (0 <= t < T) as
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with abar_t = prod_{s <= t} (1 - beta_s). The betas
are diffusers' (schedulers/scheduling_ddpm.py): "linear" from beta_start to beta_end (Ho et al.
2020: 1e-4 to 0.02 over 1000 steps), "scaled_linear" (linear in sqrt(beta)), and
"squaredcos_cap_v2" (Nichol & Dhariwal 2021's cosine schedule, abar(s) = cos^2((s + 0.008) /
1.008 * pi / 2), betas capped at 0.999). As diffusers holds them, betas and abar are float32, the
product taken in float32, so a released model is sampled on exactly its training schedule.

`Schedule` also carries the rest of a diffusers scheduler's settings that sampling reads
(prediction type, clipping of the predicted x0, the DDPM variance, the timestep spacing), with
diffusers' names, so `from_scheduler_config` reads a released `scheduler_config.json` as is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
SPACINGS = ("leading", "trailing", "linspace")
SAMPLERS = ("ddpm", "ddim")
# The scheduler classes whose settings mean the same DDPM chain (DDIM samples it deterministically).
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")


def make_betas(beta_schedule: str, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> np.ndarray:
  """f32[T]: the betas of `beta_schedule` (one of BETA_SCHEDULES), as diffusers computes them."""
  if num_train_timesteps < 1:
    raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
  if beta_schedule == "linear":
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
  if beta_schedule == "scaled_linear":
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                       dtype=np.float32) ** 2
  if beta_schedule == "squaredcos_cap_v2":
    alpha_bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.asarray([min(1 - alpha_bar((i + 1) / num_train_timesteps)
                           / alpha_bar(i / num_train_timesteps), 0.999)
                       for i in range(num_train_timesteps)], np.float32)
  raise ValueError(f"beta_schedule {beta_schedule!r} is not supported (only "
                   f"{', '.join(BETA_SCHEDULES)})")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """A DDPM chain and how to sample it, in diffusers' scheduler vocabulary.

  betas: f32[T]. prediction_type: what the network outputs (epsilon, sample = x0, v).
  clip_sample: clip each step's predicted x0 to [-clip_sample_range, clip_sample_range].
  variance_type: the ancestral step's variance (fixed_small: the posterior's, beta~_t;
    fixed_large: beta_t). timestep_spacing, steps_offset: which timesteps a sampler of n steps
    visits (`inference_timesteps`). set_alpha_to_one: DDIM's last step goes to abar = 1 (else
    to abar_0).
  """
  betas: np.ndarray
  prediction_type: str = "epsilon"
  clip_sample: bool = True
  clip_sample_range: float = 1.0
  variance_type: str = "fixed_small"
  timestep_spacing: str = "leading"
  steps_offset: int = 0
  set_alpha_to_one: bool = True

  def __post_init__(self):
    betas = np.asarray(self.betas, np.float32)
    if betas.ndim != 1 or not len(betas) or not np.all((betas > 0) & (betas < 1)):
      raise ValueError("betas must be a non-empty vector of values in (0, 1)")
    object.__setattr__(self, "betas", betas)
    for name, value, known in (("prediction_type", self.prediction_type, PREDICTION_TYPES),
                               ("variance_type", self.variance_type, VARIANCE_TYPES),
                               ("timestep_spacing", self.timestep_spacing, SPACINGS)):
      if value not in known:
        raise ValueError(f"{name} {value!r} is not supported (only {', '.join(known)})")

  @property
  def num_train_timesteps(self) -> int:
    return len(self.betas)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """f32[T]: abar_t, the product taken in float32 as diffusers takes it."""
    return np.cumprod(1.0 - self.betas, dtype=np.float32)


def from_config(config: Any) -> Schedule:
  """The schedule of a trainer's `schedule` config block (gmia.diffusion.trainer)."""
  betas = make_betas(config.beta_schedule, config.num_train_timesteps, config.beta_start,
                     config.beta_end)
  return Schedule(betas, prediction_type="epsilon", clip_sample=config.clip_sample)


def from_scheduler_config(settings: Mapping[str, Any], where: str = "scheduler") -> Schedule:
  """A diffusers DDPMScheduler / DDIMScheduler config (scheduler_config.json as a dict) as a
  Schedule; missing fields take DDPMScheduler's defaults. Raises ValueError, naming `where`, for
  other scheduler classes and for settings gmia does not implement (thresholding, zero-SNR
  rescaling, learned variances)."""
  name = settings.get("_class_name", "DDPMScheduler")
  if name not in SCHEDULER_CLASSES:
    raise ValueError(f"{where}: scheduler {name!r} is not supported (only "
                     f"{', '.join(SCHEDULER_CLASSES)} settings)")
  for flag in ("thresholding", "rescale_betas_zero_snr"):
    if settings.get(flag):
      raise ValueError(f"{where}: {flag}=true is not supported")
  trained = settings.get("trained_betas")
  try:
    betas = (np.asarray(trained, np.float32) if trained is not None else make_betas(
        settings.get("beta_schedule", "linear"), int(settings.get("num_train_timesteps", 1000)),
        float(settings.get("beta_start", 1e-4)), float(settings.get("beta_end", 0.02))))
    return Schedule(
        betas, prediction_type=settings.get("prediction_type", "epsilon"),
        clip_sample=bool(settings.get("clip_sample", True)),
        clip_sample_range=float(settings.get("clip_sample_range", 1.0)),
        variance_type=settings.get("variance_type", "fixed_small"),
        timestep_spacing=settings.get("timestep_spacing", "leading"),
        steps_offset=int(settings.get("steps_offset", 0)),
        set_alpha_to_one=bool(settings.get("set_alpha_to_one", True)))
  except ValueError as error:
    raise ValueError(f"{where}: {error}") from None


def inference_timesteps(schedule: Schedule, num_steps: int) -> np.ndarray:
  """i64[num_steps]: the timesteps a sampler of `num_steps` steps visits, descending, as
  diffusers' DDPMScheduler / DDIMScheduler `set_timesteps` spaces them."""
  train = schedule.num_train_timesteps
  if not 1 <= num_steps <= train:
    raise ValueError(f"num_steps must be in [1, {train}] (the training timesteps), got "
                     f"{num_steps}")
  if schedule.timestep_spacing == "linspace":
    return np.linspace(0, train - 1, num_steps).round()[::-1].astype(np.int64)
  if schedule.timestep_spacing == "leading":
    steps = (np.arange(num_steps) * (train // num_steps)).round()[::-1].astype(np.int64)
    return steps + schedule.steps_offset
  return np.round(np.arange(train, 0, -train / num_steps)).astype(np.int64) - 1
