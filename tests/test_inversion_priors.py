"""Inversion priors against direct numpy computations."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.inversion import priors
from gmia.models import iresnet


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(-1, 1, (3, 6, 5, 3)).astype(np.float32)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_total_variation_matches_loops(images, power):
  expected = []
  for image in images.astype(np.float64):
    h, w, _ = image.shape
    down = [abs(image[i + 1, j] - image[i, j]) ** power for i in range(h - 1) for j in range(w)]
    right = [abs(image[i, j + 1] - image[i, j]) ** power for i in range(h) for j in range(w - 1)]
    expected.append(np.mean(down) + np.mean(right))
  np.testing.assert_allclose(priors.total_variation(jnp.asarray(images), power=power), expected,
                             rtol=1e-5)


def test_total_variation_is_zero_on_constant_images():
  assert np.all(np.asarray(priors.total_variation(jnp.full((2, 4, 4, 3), 0.3))) == 0)


def test_l2_prior_and_feature_distance_match_numpy(images):
  np.testing.assert_allclose(priors.l2_prior(jnp.asarray(images)),
                             [np.sum(x.astype(np.float64) ** 2) / x.size for x in images],
                             rtol=1e-5)
  targets = np.random.default_rng(1).normal(size=images.shape).astype(np.float32)
  expected = [np.sum((f - t) ** 2) / np.sum(t ** 2)
              for f, t in zip(images.astype(np.float64), targets.astype(np.float64))]
  np.testing.assert_allclose(priors.feature_distance(jnp.asarray(images), jnp.asarray(targets)),
                             expected, rtol=1e-5)
  assert np.all(np.asarray(priors.feature_distance(jnp.asarray(targets), jnp.asarray(targets))) == 0)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match="differ in shape"):
    priors.feature_distance(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    priors.total_variation(jnp.zeros((4, 4, 3)))


class TwoLayers(nn.Module):
  """Dense -> BN -> relu -> Dense -> BN, small enough to recompute in numpy."""

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    x = nn.relu(norm()(nn.Dense(4, use_bias=False)(x)))
    return norm()(nn.Dense(3, use_bias=False)(x))


def test_batch_norm_loss_matches_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, 6)).astype(np.float32)
  model = TwoLayers()
  variables = model.init(jax.random.key(0), x)
  # Running statistics unlike the defaults, so every term of the loss is non-trivial.
  variables = {"params": variables["params"], "batch_stats": jax.tree.map(
      lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32),
      variables["batch_stats"])}
  _, moments = priors.batch_norm_statistics(model, variables, jnp.asarray(x))
  loss = priors.batch_norm_loss(moments)

  p = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
  bn = [(p["batch_stats"][f"BatchNorm_{i}"], p["params"][f"BatchNorm_{i}"]) for i in range(2)]
  expected, h = 0.0, x.astype(np.float64)
  for i, (stats, scale_bias) in enumerate(bn):
    h = h @ p["params"][f"Dense_{i}"]["kernel"]
    mean, var = h.mean(0), h.var(0)
    expected += np.linalg.norm(mean - stats["mean"]) + np.linalg.norm(var - stats["var"])
    h = (h - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * scale_bias["scale"] + scale_bias["bias"]
    h = np.maximum(h, 0) if i == 0 else h
  assert len(moments) == 2
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_batch_norm_statistics_stop_at_the_split_layer():
  """An IResNet cut after its stem runs one BatchNorm; after stage 1 (one block) five."""
  model = iresnet.IResNet(blocks=(1, 1, 1, 1), width=4, num_features=8)
  x = jnp.zeros((1, 16, 16, 3))
  variables = model.init(iresnet.init_key(0), x)
  for layer, count in (("stem", 1), ("stage1", 5)):
    out, moments = priors.batch_norm_statistics(model, variables, x, train=False,
                                                capture=(layer,))
    assert len(moments) == count and set(out) == {layer}
