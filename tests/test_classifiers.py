"""ResNet classifier: the split protocol (halves and blocks compose to the whole network), its
layout against a direct numpy forward pass, and clear errors for bad inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.models.classifiers import LAYERS, ResNetClassifier
from gmia.models.split import check_split
from gmia.models.iresnet import init_key

TINY = ResNetClassifier(num_classes=5, widths=(4, 8, 8), blocks=(1, 2, 1))
SIZE = 16


@functools.cache
def tiny_variables():
  variables = jax.jit(TINY.init)(init_key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  # Non-trivial running statistics, so inference-mode BN is not the identity.
  rng = np.random.default_rng(1)
  stats = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32),
                       variables["batch_stats"])
  return {"params": variables["params"], "batch_stats": stats}


def images(n=2, seed=4):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)), jnp.float32)


def test_layers_name_the_split_points_in_order():
  whole = TINY.apply(tiny_variables(), images(), capture=TINY.layers)
  assert TINY.layers == LAYERS and list(whole) == list(LAYERS)
  assert [whole[name].shape for name in LAYERS] == [
      (2, 16, 16, 4), (2, 16, 16, 4), (2, 8, 8, 8), (2, 4, 4, 8), (2, 5)]
  np.testing.assert_allclose(TINY.apply(tiny_variables(), images()), whole["logits"], atol=1e-6)
  # Stopping early means the later layers are never traced.
  assert set(TINY.apply(tiny_variables(), images(), capture=("stage1",))) == {"stage1"}


def test_split_halves_compose_to_the_whole_network():
  variables = tiny_variables()
  whole = TINY.apply(variables, images(), capture=TINY.layers)
  for cut in TINY.layers[:-1]:
    np.testing.assert_allclose(TINY.apply(variables, whole[cut], start=cut), whole["logits"],
                               atol=1e-5, err_msg=cut)
  for before, after in zip(TINY.layers[:-1], TINY.layers[1:]):
    block = TINY.apply(variables, whole[before], start=before, capture=(after,))
    assert set(block) == {after}
    np.testing.assert_allclose(block[after], whole[after], atol=1e-5, err_msg=after)


def conv(x, kernel, stride):
  """Cross-correlation with PyTorch padding (k // 2 on every side): x [H, W, Ci], kernel
  [k, k, Ci, Co]."""
  k = kernel.shape[0]
  x = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  rows = (x.shape[0] - k) // stride + 1
  out = np.zeros((rows, rows, kernel.shape[-1]))
  for i in range(rows):
    for j in range(rows):
      patch = x[i * stride:i * stride + k, j * stride:j * stride + k]
      out[i, j] = np.tensordot(patch, kernel, axes=3)
  return out


def batch_norm(x, params, stats):
  return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


def numpy_forward(variables, image):
  """The documented layout, written out in numpy (inference mode)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  s = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"])
  relu = lambda v: np.maximum(v, 0)
  x = relu(batch_norm(conv(image, p["stem_conv"]["kernel"], 1), p["stem_bn"], s["stem_bn"]))
  for stage, (num_blocks, stride) in enumerate(zip(TINY.blocks, TINY.strides)):
    for block in range(num_blocks):
      name = f"stage{stage + 1}_block{block + 1}"
      bp, bs = p[name], s[name]
      first = stride if block == 0 else 1
      y = relu(batch_norm(conv(x, bp["conv1"]["kernel"], first), bp["bn1"], bs["bn1"]))
      y = batch_norm(conv(y, bp["conv2"]["kernel"], 1), bp["bn2"], bs["bn2"])
      if "shortcut_conv" in bp:
        x = batch_norm(conv(x, bp["shortcut_conv"]["kernel"], first), bp["shortcut_bn"],
                       bs["shortcut_bn"])
      x = relu(y + x)
  return x.mean(axis=(0, 1)) @ p["logits"]["kernel"] + p["logits"]["bias"]


def test_forward_matches_numpy_layout():
  variables, x = tiny_variables(), images(1)
  expected = numpy_forward(variables, np.asarray(x[0], np.float64))
  np.testing.assert_allclose(TINY.apply(variables, x)[0], expected, rtol=1e-4, atol=1e-4)
  assert "shortcut_conv" not in variables["params"]["stage1_block1"]  # Same width, stride 1.


def test_training_updates_running_statistics():
  # PyTorch's momentum 0.1 on flax's batch statistics (the biased variance): running =
  # 0.9 * running + 0.1 * batch statistic, checked on the stem BN, whose input (the stem
  # convolution of the batch) is recomputed in numpy.
  variables, x = tiny_variables(), images(4)
  _, updates = TINY.apply(variables, x, train=True, mutable=["batch_stats"])
  kernel = np.asarray(variables["params"]["stem_conv"]["kernel"], np.float64)
  h = np.stack([conv(image, kernel, 1) for image in np.asarray(x, np.float64)])
  old, new = variables["batch_stats"]["stem_bn"], updates["batch_stats"]["stem_bn"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * h.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * h.var((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_rejected():
  variables = tiny_variables()
  with pytest.raises(ValueError, match="divisible by 4"):
    TINY.apply(variables, jnp.zeros((1, 18, 18, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    TINY.apply(variables, jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match="unknown layer"):
    TINY.apply(variables, jnp.zeros((1, 16, 16, 3)), capture=("embedding",))
  with pytest.raises(ValueError, match="at or before start"):
    TINY.apply(variables, jnp.zeros((1, 8, 8, 8)), start="stage2", capture=("stage1",))
  with pytest.raises(ValueError, match="nothing runs after"):
    TINY.apply(variables, jnp.zeros((1, 5)), start="logits")
  with pytest.raises(ValueError, match="3 stages"):
    ResNetClassifier(num_classes=2, widths=(4, 8)).init(init_key(0), jnp.zeros((1, 8, 8, 3)))
  assert check_split(LAYERS, ("stage2",), "stem") == (0, 2)
  assert check_split(LAYERS, (), None) == (-1, len(LAYERS) - 1)
