"""The samplers: DDIM over the full schedule against its closed form on a Gaussian toy model, and
sample i a pure function of (seed, i) in any chunking, order and device count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.diffusion import sampling
from gmia.models import noise_schedule as schedule
from gmia.models.unet import UNet
from gmia.sources.base import latents
from tests.multidevice import run_with_devices

RES = 8
TINY = dict(block_out_channels=(4, 8), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
            norm_num_groups=2, attention_head_dim=4)


class GaussianDenoiser:
  """The exact noise predictor for data x0 ~ N(mu, s^2 I): E[eps | x_t] =
  sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)."""

  def apply(self, variables, x, t):
    a = variables["abar"][t][:, None, None, None]
    mu, s2 = variables["mu"], variables["s"] ** 2
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s2 + 1 - a)


def gaussian(chain, s=0.5):
  mu = np.random.default_rng(0).uniform(-0.5, 0.5, (RES, RES, 3)).astype(np.float32)
  return {"abar": jnp.asarray(chain.alphas_cumprod), "mu": jnp.asarray(mu), "s": jnp.float32(s)}


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
def test_ddim_over_the_full_schedule_equals_the_closed_form(kind):
  """With the exact predictor, a DDIM step from abar to abar' maps x_t - sqrt(abar) mu to
  (x_t - sqrt(abar) mu) (sqrt(abar abar') s^2 + sqrt((1 - abar)(1 - abar'))) / (abar s^2 + 1 -
  abar): the chain of all T steps is one product of scalars per image."""
  chain = schedule.Schedule(schedule.make_betas(kind), clip_sample=False)
  variables = gaussian(chain)
  steps = chain.num_train_timesteps
  sample = sampling.make_sampler(GaussianDenoiser(), variables, chain, sampler="ddim",
                                 num_steps=steps, resolution=RES)
  got = np.asarray(sample(np.arange(4), 7), np.float64)
  abar = chain.alphas_cumprod.astype(np.float64)[::-1]  # Visited T-1 .. 0, then abar = 1.
  nxt = np.append(abar[1:], 1.0)
  s2 = 0.25
  factor = np.prod((np.sqrt(abar * nxt) * s2 + np.sqrt((1 - abar) * (1 - nxt)))
                   / (abar * s2 + 1 - abar))
  x_T = np.asarray(latents(7, jnp.arange(4), (RES, RES, 3)), np.float64)
  mu = np.asarray(variables["mu"], np.float64)
  want = np.clip(mu + (x_T - np.sqrt(abar[0]) * mu) * factor, -1, 1)
  assert 0.05 < factor < 1  # The chain shrinks the noise to the data's spread: s / 1.
  np.testing.assert_allclose(got, want, atol=2e-5)


def random_variables(net, seed, res=RES):
  """Random weights of `net`'s shapes, without compiling its initialiser: kernels
  N(0, 1 / fan_in), norm scales 1 + N(0, 0.2^2), biases N(0, 0.2^2)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, res, res, 3)),
                          jnp.zeros((1,), jnp.int32))

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    return (name == "scale") + 0.2 * rng.standard_normal(leaf.shape)
  return jax.tree_util.tree_map_with_path(lambda p, l: jnp.asarray(draw(p, l), l.dtype), shapes)


@pytest.fixture(scope="module")
def tiny_unet():
  net = UNet(**TINY)
  return net, random_variables(net, 3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample_i_is_a_function_of_seed_and_i_alone(sampler, tiny_unet):
  net, variables = tiny_unet
  chain = schedule.Schedule(schedule.make_betas("linear"))
  sample = sampling.make_sampler(net, variables, chain, sampler=sampler, num_steps=5,
                                 resolution=RES)
  whole = np.asarray(sample(np.arange(6), 11))
  assert whole.shape == (6, RES, RES, 3) and np.all(np.abs(whole) <= 1)
  assert np.min(np.abs(whole[:, None] - whole[None]).mean(axis=(2, 3, 4))
                + np.eye(6)) > 1e-2, "samples repeat"
  # Other batch sizes round the convolutions' sums differently; the first step's x0 = (x - ...)
  # / sqrt(abar_999) multiplies that by ~160, to ~1e-5: far below the spread between samples.
  for indices in ([4, 1], [5], [2, 3, 0]):
    np.testing.assert_allclose(np.asarray(sample(np.array(indices), 11)), whole[indices],
                               atol=1e-4)
  np.testing.assert_array_equal(np.asarray(sample(np.arange(6), 11)), whole)
  assert np.abs(np.asarray(sample(np.arange(6), 12)) - whole).mean() > 1e-2


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_toy_models_samples_are_bit_identical_in_any_chunking(sampler):
  """An elementwise model computes each image alone: the draws alone decide the images."""
  chain = schedule.Schedule(schedule.make_betas("linear"))
  sample = sampling.make_sampler(GaussianDenoiser(), gaussian(chain), chain, sampler=sampler,
                                 num_steps=20, resolution=RES)
  whole = np.asarray(sample(np.arange(5), 0))
  np.testing.assert_array_equal(np.asarray(sample(np.array([3, 0]), 0)), whole[[3, 0]])
  if sampler == "ddpm":  # Ancestral noise moves the images away from DDIM's.
    ddim = sampling.make_sampler(GaussianDenoiser(), gaussian(chain), chain, sampler="ddim",
                                 num_steps=20, resolution=RES)
    assert np.abs(np.asarray(ddim(np.arange(5), 0)) - whole).mean() > 1e-2


EIGHT_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from gmia.diffusion import sampling
from gmia.models import noise_schedule as schedule
from gmia.models.unet import UNet
from tests.test_diffusion_sampling import RES, TINY, random_variables
net = UNet(**TINY)
variables = random_variables(net, 3)
sample = sampling.make_sampler(net, variables, schedule.Schedule(schedule.make_betas("linear")),
                               sampler="ddpm", num_steps=5, resolution=RES)
images = sample(np.arange(6), 11)
RESULT = {"images": np.asarray(images), "devices": len(images.sharding.device_set)}
"""


def test_eight_devices_sample_what_one_does(tiny_unet):
  net, variables = tiny_unet
  sample = sampling.make_sampler(net, variables, schedule.Schedule(schedule.make_betas("linear")),
                                 sampler="ddpm", num_steps=5, resolution=RES)
  result = run_with_devices(8, EIGHT_DEVICES)
  assert int(result["devices"]) == 8
  np.testing.assert_allclose(result["images"], np.asarray(sample(np.arange(6), 11)), atol=1e-4)
