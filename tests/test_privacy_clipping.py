"""Person-level clipping and noise against numpy on a small model: each person's summed gradient
clipped to the norm, the people summed, and Gaussian noise of the stated standard deviation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.privacy import clipping

PEOPLE, PHOTOS, FEATURES, OUTPUTS = 5, 3, 4, 2


def _people(seed=0):
  """A linear model and 5 people of up to 3 photos (person 3 has 1, person 4 none)."""
  rng = np.random.default_rng(seed)
  params = {"w": rng.standard_normal((FEATURES, OUTPUTS)), "b": rng.standard_normal(OUTPUTS)}
  x = rng.standard_normal((PEOPLE, PHOTOS, FEATURES))
  y = rng.standard_normal((PEOPLE, PHOTOS, OUTPUTS))
  mask = np.ones((PEOPLE, PHOTOS))
  mask[3, 1:] = 0
  mask[4] = 0
  return params, x, y, mask


def _person_loss(params, x, y, mask):
  residual = x @ params["w"] + params["b"] - y
  return jnp.sum(mask[:, None] * residual ** 2) / PHOTOS


def _per_person_grads(params, x, y, mask):
  return jax.vmap(jax.grad(_person_loss), in_axes=(None, 0, 0, 0))(params, x, y, mask)


def _numpy_clipped_sum(params, x, y, mask, clip_norm):
  """Closed-form per-person gradients of the squared error, clipped and summed in float64."""
  residual = 2 * mask[..., None] * (x @ params["w"] + params["b"] - y) / PHOTOS  # [P, K, O]
  grad_w = np.einsum("pkf,pko->pfo", x, residual)
  grad_b = residual.sum(axis=1)
  norms = np.sqrt((grad_w ** 2).sum(axis=(1, 2)) + (grad_b ** 2).sum(axis=1))
  scale = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
  return {"w": np.einsum("p,pfo->fo", scale, grad_w), "b": scale @ grad_b}, norms


@pytest.mark.parametrize("clip_norm", [0.3, 2.0, np.inf])
def test_clipped_sum_matches_numpy(clip_norm):
  params, x, y, mask = _people()
  want, norms = _numpy_clipped_sum(params, x, y, mask, clip_norm)
  if np.isfinite(clip_norm):
    assert np.sum(norms > clip_norm) >= 2  # The case clips someone, and leaves someone.
  grads = _per_person_grads(jax.tree.map(jnp.asarray, params), x, y, mask)
  got = clipping.clipped_sum(grads, clip_norm)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
  # With no noise, the clipped sum is left as it is, and nothing is drawn.
  same = clipping.add_noise(got, clip_norm=clip_norm, noise_multiplier=0.0, key=None)
  for name in want:
    np.testing.assert_array_equal(same[name], got[name])


def test_a_person_with_nan_or_inf_stays_within_the_clip_norm():
  params, x, y, mask = _people()
  grads = _per_person_grads(jax.tree.map(jnp.asarray, params), x, y, mask)
  poisoned = {"w": grads["w"].at[0, 0, 0].set(jnp.nan), "b": grads["b"].at[0, 1].set(jnp.inf)}
  without = jax.tree.map(lambda g: g[1:], grads)
  difference = jax.tree.map(jnp.subtract, clipping.clipped_sum(poisoned, 0.5),
                            clipping.clipped_sum(without, 0.5))
  norm = float(jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(difference))))
  assert np.isfinite(norm) and norm <= 0.5 + 1e-5


def test_noise_has_the_stated_standard_deviation():
  params, x, y, mask = _people()
  grads = _per_person_grads(jax.tree.map(jnp.asarray, params), x, y, mask)
  clip_norm, noise_multiplier, draws = 0.3, 1.7, 4000
  clipped = clipping.clipped_sum(grads, clip_norm)

  @jax.jit
  def noise(key):
    noisy = clipping.add_noise(clipped, clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                               key=key)
    return jnp.concatenate([(noisy[k] - clipped[k]).ravel() for k in ("w", "b")])

  samples = np.asarray(jax.vmap(noise)(jax.random.split(jax.random.key(0), draws)))
  stddev = clip_norm * noise_multiplier
  n = samples.size  # 4,000 draws of 10 coordinates.
  assert abs(samples.mean()) < 4 * stddev / np.sqrt(n)
  # The sample standard deviation of n normals has relative spread 1 / sqrt(2 n) = 0.35%.
  assert samples.std() == pytest.approx(stddev, rel=0.015)
  # Every coordinate gets it (4,000 draws each: relative spread 1.1%), independently.
  np.testing.assert_allclose(samples.std(axis=0), stddev, rtol=0.05)
  correlation = np.corrcoef(samples.T) - np.eye(samples.shape[1])
  assert np.abs(correlation).max() < 5 / np.sqrt(draws)
  # The same key gives the same noise, another key other noise.
  np.testing.assert_array_equal(noise(jax.random.key(3)), noise(jax.random.key(3)))
  assert not np.allclose(noise(jax.random.key(3)), noise(jax.random.key(4)))


def test_noise_without_a_finite_clip_norm_is_refused():
  grads = {"w": jnp.zeros((2, 3))}
  with pytest.raises(ValueError, match="positive and finite"):
    clipping.add_noise(grads, clip_norm=np.inf, noise_multiplier=1.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="non-negative"):
    clipping.add_noise(grads, clip_norm=1.0, noise_multiplier=-1.0, key=jax.random.key(0))
