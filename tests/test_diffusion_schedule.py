"""DDPM schedules and single sampler steps against numpy written here and diffusers' recordings.

tests/fixtures/diffusers/schedulers.npz was recorded with diffusers 0.42.1 (torch 2.13, CPU):
`DDPMScheduler(beta_schedule=S).alphas_cumprod` for linear, squaredcos_cap_v2 and scaled_linear;
`DDPMScheduler` / `DDIMScheduler(timestep_spacing=SP, steps_offset=O).set_timesteps(N)` for
SP in leading, trailing, linspace and (N, O) in (10, 0), (50, 1), (1000, 0), (7, 0); and, on fixed
sample and model output [2, 3, 4, 4] (stored NHWC), `DDPMScheduler(beta_schedule=S,
clip_sample=C)` with 20 inference steps stepped at its 4th timestep with generator seed 0 (the
noise it drew recorded beside it) and `DDIMScheduler(...).step(..., eta=0)` at that timestep and
at the last one, for S in linear, squaredcos_cap_v2 and C in true, false.
"""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from gmia.diffusion import sampling
from gmia.models import noise_schedule as schedule

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers", "schedulers.npz")


@pytest.fixture(scope="module")
def ref():
  return dict(np.load(FIXTURE))


def numpy_betas(kind, steps=1000, start=1e-4, end=0.02):
  """The betas from their definitions, in float64."""
  if kind == "linear":
    return np.linspace(start, end, steps)
  if kind == "scaled_linear":
    return np.linspace(math.sqrt(start), math.sqrt(end), steps) ** 2
  f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
  s = np.arange(steps) / steps
  return np.minimum(1 - f(s + 1 / steps) / f(s), 0.999)


@pytest.mark.parametrize("kind", schedule.BETA_SCHEDULES)
def test_betas_and_alphas_cumprod(kind, ref):
  betas = schedule.make_betas(kind)
  assert betas.dtype == np.float32 and betas.shape == (1000,)
  np.testing.assert_allclose(betas, numpy_betas(kind), rtol=1e-6)
  abar = schedule.Schedule(betas).alphas_cumprod
  np.testing.assert_allclose(abar, np.cumprod(1 - numpy_betas(kind)), rtol=2e-5)
  # diffusers takes the product in float32 too (torch's order of it differs by an ulp or two).
  np.testing.assert_allclose(abar, ref[f"{kind}/alphas_cumprod"], rtol=3e-6)
  if kind == "squaredcos_cap_v2":  # abar_t ~ f(t / T) / f(0) until the cap bites at the end.
    t = np.arange(0, 900, 100)
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(abar[t], f((t + 1) / 1000) / f(0), rtol=1e-4)


def test_inference_timesteps_match_diffusers_set_timesteps(ref):
  checked = 0
  for key in ref:
    if key.endswith("/timesteps"):
      _, spacing, steps, offset, _ = key.split("/")
      plan = schedule.Schedule(schedule.make_betas("linear"), timestep_spacing=spacing,
                               steps_offset=int(offset))
      np.testing.assert_array_equal(schedule.inference_timesteps(plan, int(steps)), ref[key],
                                    err_msg=key)
      checked += 1
  assert checked == 24


def numpy_ddpm_step(abar, t, prev, eps, x, noise, clip, variance_type="fixed_small"):
  """Ho et al. eq. 7 written out: the posterior mean from the clipped x0 and the posterior (or
  beta) standard deviation, no noise at t = 0."""
  a_t, a_prev = abar[t], (abar[prev] if prev >= 0 else 1.0)
  beta = 1 - a_t / a_prev
  x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
  if clip:
    x0 = np.clip(x0, -1, 1)
  mean = np.sqrt(a_prev) * beta / (1 - a_t) * x0 + np.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x
  var = (1 - a_prev) / (1 - a_t) * beta if variance_type == "fixed_small" else beta
  return mean + (np.sqrt(var) * noise if t > 0 else 0)


def run_step(chain, sampler, steps, index, eps, x, noise):
  plan = sampling.make_plan(chain, sampler, steps)
  out = sampling.step(plan, chain, jnp.asarray(plan.coefficients[index]), jnp.asarray(eps),
                      jnp.asarray(x), jnp.asarray(noise))
  return plan, np.asarray(out)


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("clip", [True, False])
def test_one_ancestral_step_against_numpy_and_diffusers(kind, clip, ref):
  chain = schedule.Schedule(schedule.make_betas(kind), clip_sample=clip)
  eps, x = ref["eps"], ref["sample"]
  noise = ref[f"ddpm_step/{kind}/{clip}/noise"]
  plan, got = run_step(chain, "ddpm", 20, 3, eps, x, noise)
  t, prev = plan.timesteps[3], plan.timesteps[4]
  assert t == ref[f"ddpm_step/{kind}/{clip}/t"]
  abar = chain.alphas_cumprod.astype(np.float64)
  np.testing.assert_allclose(got, numpy_ddpm_step(abar, t, prev, eps, x, noise, clip), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(got, ref[f"ddpm_step/{kind}/{clip}/prev"], rtol=1e-5, atol=1e-5)
  # The last step (t = 0) adds no noise; fixed_large uses beta_t as the variance.
  _, last = run_step(chain, "ddpm", 20, 19, eps, x, noise)
  np.testing.assert_allclose(last, numpy_ddpm_step(abar, 0, -1, eps, x, noise, clip), rtol=1e-5,
                             atol=1e-5)
  large = schedule.Schedule(chain.betas, clip_sample=clip, variance_type="fixed_large")
  _, got = run_step(large, "ddpm", 20, 3, eps, x, noise)
  np.testing.assert_allclose(got, numpy_ddpm_step(abar, t, prev, eps, x, noise, clip,
                                                  "fixed_large"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("clip", [True, False])
def test_one_ddim_step_against_diffusers(kind, clip, ref):
  chain = schedule.Schedule(schedule.make_betas(kind), clip_sample=clip)
  eps, x = ref["eps"], ref["sample"]
  plan, got = run_step(chain, "ddim", 20, 3, eps, x, np.full_like(x, np.nan))
  np.testing.assert_allclose(got, ref[f"ddim_step/{kind}/{clip}/prev"], rtol=1e-5, atol=1e-5)
  assert plan.timesteps[-1] == ref[f"ddim_step/{kind}/{clip}/last_t"]
  _, got = run_step(chain, "ddim", 20, 19, eps, x, np.zeros_like(x))
  np.testing.assert_allclose(got, ref[f"ddim_step/{kind}/{clip}/last_prev"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_other_prediction_types_give_the_same_x0_and_noise(prediction):
  """A network predicting x0 or v that is exact gives the same (x0, eps) as an exact epsilon one."""
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 3, 4, 4, 3))
  sqrt_abar, sqrt_1m = 0.6, 0.8
  x_t = sqrt_abar * x0 + sqrt_1m * eps
  output = x0 if prediction == "sample" else sqrt_abar * eps - sqrt_1m * x0
  chain = schedule.Schedule(schedule.make_betas("linear"), prediction_type=prediction)
  got_x0, got_eps = sampling.x0_and_noise(chain, output, x_t, sqrt_abar, sqrt_1m)
  np.testing.assert_allclose(got_x0, x0, atol=1e-6)
  np.testing.assert_allclose(got_eps, eps, atol=1e-6)


def test_scheduler_configs_and_their_errors():
  chain = schedule.from_scheduler_config({"_class_name": "DDIMScheduler", "beta_schedule":
                                          "squaredcos_cap_v2", "num_train_timesteps": 500,
                                          "clip_sample": False, "timestep_spacing": "trailing",
                                          "set_alpha_to_one": False})
  assert chain.num_train_timesteps == 500 and not chain.clip_sample and not chain.set_alpha_to_one
  np.testing.assert_array_equal(chain.betas, schedule.make_betas("squaredcos_cap_v2", 500))
  trained = schedule.from_scheduler_config({"trained_betas": [0.1, 0.2, 0.3]})
  np.testing.assert_allclose(trained.alphas_cumprod, [0.9, 0.72, 0.504], rtol=1e-6)
  defaults = schedule.from_scheduler_config({})
  np.testing.assert_array_equal(defaults.betas, schedule.make_betas("linear"))
  for settings, message in (
      ({"_class_name": "PNDMScheduler"}, "scheduler 'PNDMScheduler' is not supported"),
      ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid' is not supported"),
      ({"variance_type": "learned_range"}, "variance_type 'learned_range' is not supported"),
      ({"thresholding": True}, "thresholding=true is not supported"),
      ({"trained_betas": [0.5, 1.5]}, r"betas must be .* in \(0, 1\)")):
    with pytest.raises(ValueError, match=f"^where: {message}"):
      schedule.from_scheduler_config(settings, "where")
  with pytest.raises(ValueError, match=r"num_steps must be in \[1, 1000\]"):
    schedule.inference_timesteps(defaults, 1001)
  with pytest.raises(ValueError, match="sampler must be one of"):
    sampling.make_plan(defaults, "euler", 10)
