"""The gray-box denoising score: against a numpy recomputation on a tiny random U-Net, independent
of chunking, and a planted case where a memorising denoiser separates its training people."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.attacks import denoising
from gmia.models import noise_schedule as schedule
from gmia.models.unet import UNet
from tests.test_diffusion_sampling import RES, TINY, random_variables

TIMESTEPS = [10, 100, 500]


@pytest.fixture(scope="module")
def model():
  net = UNet(**TINY)
  return net, random_variables(net, 5), schedule.Schedule(schedule.make_betas("linear"))


@pytest.fixture(scope="module")
def photos():
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, (5, RES, RES, 3)).astype(np.float32), np.array([7, 3, 12, 0, 5])


@pytest.mark.parametrize("kind", denoising.KINDS)
def test_errors_against_numpy(kind, model, photos):
  net, variables, chain = model
  images, ids = photos
  got = denoising.denoising_errors(net, variables, chain, images, ids, TIMESTEPS, seed=3,
                                   kind=kind, chunk=2)
  assert got.shape == (5, 3) and got.dtype == np.float32
  apply = jax.jit(net.apply)
  abar = chain.alphas_cumprod.astype(np.float64)
  want = np.zeros((5, 3))
  for n, (image, photo) in enumerate(zip(images.astype(np.float64), ids)):
    for j, t in enumerate(TIMESTEPS):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), photo), t)
      eps = np.asarray(jax.random.normal(key, image.shape), np.float64)
      x = image if kind == "predicted_norm" else np.sqrt(abar[t]) * image + np.sqrt(
          1 - abar[t]) * eps
      eps_hat = np.asarray(apply(variables, x[None].astype(np.float32), jnp.array([t])),
                           np.float64)[0]
      want[n, j] = np.mean(np.square(eps_hat if kind == "predicted_norm" else eps_hat - eps))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # A photo's errors depend on (seed, its id, t) alone: not on the chunk or the other photos.
  subset = denoising.denoising_errors(net, variables, chain, images[[4, 1]], ids[[4, 1]],
                                      TIMESTEPS[1:], seed=3, kind=kind, chunk=64)
  np.testing.assert_allclose(subset, got[[4, 1], 1:], rtol=1e-5)
  if kind == "noise_error":
    other = denoising.denoising_errors(net, variables, chain, images, ids, TIMESTEPS, seed=4)
    assert np.all(other != got)


class MemorisingDenoiser:
  """The exact denoiser of the empirical distribution of `variables["train"]` [M, R, R, 3]:
  eps^ = (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar), E[x0 | x_t] the softmax-weighted
  training images (weights -|x_t - sqrt(abar) m|^2 / (2 (1 - abar))): a model that has
  memorised its training set (Kadkhodaie et al. 2024)."""

  def apply(self, variables, x, t):
    a = variables["abar"][t][:, None]
    train = variables["train"].reshape(len(variables["train"]), -1)
    flat = x.reshape(len(x), -1)
    distances = jnp.sum(jnp.square(flat[:, None] - jnp.sqrt(a)[:, :, None] * train[None]), -1)
    weights = jax.nn.softmax(-distances / (2 * (1 - a)), axis=1)
    x0 = weights @ train
    return ((flat - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)).reshape(x.shape)


def test_a_memorising_denoiser_gives_its_people_away():
  """8 people, 2 photos each; members' photos are their training images slightly changed
  (another photo of the same face), non-members' are other faces."""
  rng = np.random.default_rng(1)
  chain = schedule.Schedule(schedule.make_betas("linear"))
  train = rng.uniform(-1, 1, (4, RES, RES, 3)).astype(np.float32)  # People 0-3, one image each.
  members = np.repeat(train, 2, axis=0) + 0.05 * rng.standard_normal((8, RES, RES, 3))
  others = rng.uniform(-1, 1, (8, RES, RES, 3))
  images = np.concatenate([members, others]).astype(np.float32)
  person = np.repeat(np.arange(8), 2)
  variables = {"abar": jnp.asarray(chain.alphas_cumprod), "train": jnp.asarray(train)}
  errors = denoising.denoising_errors(MemorisingDenoiser(), variables, chain, images,
                                      np.arange(16), [50, 200], seed=0)
  scores = denoising.person_scores(errors, person, 8)
  assert scores[:4].min() > scores[4:].max()
  np.testing.assert_allclose(scores, [-errors[person == p].mean() for p in range(8)],
                             rtol=1e-6)


def test_person_scores_and_errors():
  errors = np.array([[1.0, 3.0], [2.0, 2.0], [5.0, 7.0]])
  np.testing.assert_allclose(denoising.person_scores(errors, np.array([1, 1, 0]), 2), [-6, -2])
  with pytest.raises(ValueError, match="1 of 3 people have no photo to score"):
    denoising.person_scores(errors, np.array([1, 1, 0]), 3)
  with pytest.raises(ValueError, match=r"person indices must lie in \[0, 2\)"):
    denoising.person_scores(errors, np.array([1, 2, 0]), 2)
  chain = schedule.Schedule(schedule.make_betas("linear"))
  with pytest.raises(ValueError, match=r"timesteps must be .* in \[0, 1000\)"):
    denoising.make_errors_fn(MemorisingDenoiser(), chain, [1000], "noise_error")
  with pytest.raises(ValueError, match="kind must be one of"):
    denoising.make_errors_fn(MemorisingDenoiser(), chain, [1], "loss")
