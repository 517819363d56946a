"""ArcFace / CosFace margins against numpy references, and the class-sharded head on 8 devices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.models.margins import Margin, margin_logits, margin_loss
from tests.multidevice import run_with_devices


def numpy_target(cosine, margin):
  """insightface's rules, written with arccos."""
  if margin.kind == "cosface":
    return cosine - margin.margin
  theta = np.arccos(cosine)
  with_margin = np.cos(theta + margin.margin)
  if margin.easy_margin:
    return np.where(cosine > 0, with_margin, cosine)
  return np.where(theta + margin.margin < np.pi, with_margin,
                  cosine - math.sin(math.pi - margin.margin) * margin.margin)


def numpy_logits(cosine, labels, margin):
  logits = cosine.astype(np.float64).copy()
  rows = np.arange(len(labels))
  logits[rows, labels] = numpy_target(logits[rows, labels], margin)
  return margin.scale * logits


MARGINS = [Margin("arcface", 64.0, 0.5), Margin("arcface", 64.0, 0.5, easy_margin=True),
           Margin("cosface", 64.0, 0.4)]


@pytest.mark.parametrize("margin", MARGINS, ids=["arcface", "arcface_easy", "cosface"])
def test_logits_match_reference_and_gradient_is_straight_through(margin):
  rng = np.random.default_rng(0)
  # Cover the whole range, including targets past the threshold (theta > pi - m).
  cosine = rng.uniform(-1, 1, (64, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 64)
  is_target = jnp.asarray(labels[:, None] == np.arange(10))
  got = margin_logits(jnp.asarray(cosine), is_target, margin)
  np.testing.assert_allclose(got, numpy_logits(cosine, labels, margin), atol=2e-4)
  weights = rng.normal(size=cosine.shape).astype(np.float32)
  grad = jax.grad(lambda c: jnp.sum(weights * margin_logits(c, is_target, margin)))(cosine)
  np.testing.assert_allclose(grad, margin.scale * weights, rtol=1e-6)


def test_loss_is_softmax_cross_entropy_of_margin_logits():
  rng = np.random.default_rng(1)
  embeddings = rng.normal(size=(12, 6)).astype(np.float32)
  centres = rng.normal(size=(9, 6)).astype(np.float32)
  labels = rng.integers(0, 9, 12)
  margin = Margin("arcface", 16.0, 0.3)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = numpy_logits(np.clip(unit(embeddings) @ unit(centres).T, -1, 1), labels, margin)
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  expected = -log_probs[np.arange(12), labels].mean()
  got = margin_loss(jnp.asarray(embeddings), jnp.asarray(centres), jnp.asarray(labels), margin)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bad_settings_are_rejected():
  with pytest.raises(ValueError, match="margin kind"):
    Margin("sphereface")
  with pytest.raises(ValueError, match="labels must be"):
    margin_loss(jnp.zeros((4, 3)), jnp.zeros((5, 3)), jnp.zeros((3,), jnp.int32), Margin())


def test_sharded_head_equals_unsharded_on_8_devices():
  result = run_with_devices(8, """
import functools
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from gmia.models.margins import Margin, margin_loss, padded_num_classes, sharded_margin_loss
from gmia.parallel import DATA_AXIS, make_mesh

mesh = make_mesh()
num_classes, batch, dim = 21, 16, 8
padded = padded_num_classes(num_classes, 8)
rng = np.random.default_rng(0)
embeddings = rng.normal(size=(batch, dim)).astype(np.float32)
centres = rng.normal(size=(padded, dim)).astype(np.float32)
labels = rng.integers(0, num_classes, batch).astype(np.int32)
margin = Margin("arcface", 32.0, 0.5)
rows = NamedSharding(mesh, P(DATA_AXIS))
loss = lambda e, c, l: sharded_margin_loss(e, c, l, margin, mesh, DATA_AXIS, num_classes)
value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
    jax.device_put(embeddings, rows), jax.device_put(centres, rows), jax.device_put(labels, rows))
unsharded = lambda e, c: margin_loss(e, c, labels, margin)
ref_value, ref_grads = jax.value_and_grad(unsharded, argnums=(0, 1))(embeddings,
                                                                     centres[:num_classes])
RESULT = dict(value=value, ref_value=ref_value, grad_e=grads[0], ref_grad_e=ref_grads[0],
              grad_c=grads[1], ref_grad_c=ref_grads[1], padded=padded,
              centre_shards=len(centres) // len(grads[1].addressable_shards[0].data))
""")
  assert int(result["padded"]) == 24 and int(result["centre_shards"]) == 8
  np.testing.assert_allclose(result["value"], result["ref_value"], rtol=1e-5)
  np.testing.assert_allclose(result["grad_e"], result["ref_grad_e"], atol=1e-5)
  np.testing.assert_allclose(result["grad_c"][:21], result["ref_grad_c"], atol=1e-5)
  np.testing.assert_array_equal(result["grad_c"][21:], 0)
