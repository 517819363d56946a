"""IResNet against insightface's own arcface_torch, structure, read-outs, batch-norm statistics,
and the embedding function.

tests/fixtures/arcface_torch/iresnet_small.npz holds random weights of a small IResNet built from
arcface_torch's classes (backbones/iresnet.py of deepinsight/insightface 7fadd42, torch 2.13 on
CPU; record.py beside it says how), mapped to gmia's variable paths, an input and arcface_torch's
outputs at every layer gmia captures, in inference and in training mode.
"""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.face_encoder.embed import embed
from gmia.models.preprocessing import preprocess
from gmia.models.iresnet import ARCHS, IResNet, init_key, input_size, iresnet

TINY = IResNet(blocks=(1, 1, 1, 1), width=8, num_features=16)
SIZE = 32
ARCFACE = os.path.join(os.path.dirname(__file__), "fixtures", "arcface_torch", "iresnet_small.npz")


@functools.cache
def tiny_variables():
  return jax.jit(TINY.init)(init_key(0), jnp.zeros((1, SIZE, SIZE, 3)))


@functools.partial(jax.jit, static_argnames=("train", "capture"))
def apply(variables, x, train=False, capture=()):
  """TINY.apply, compiled (eager flax dispatch is slow on CPU)."""
  return TINY.apply(variables, x, train=train, capture=capture,
                    mutable=["batch_stats"] if train else False)


def layout_parameter_count(blocks, width=64, features=512, size=112):
  """Trainable parameters of arcface_torch's IResNet, counted from its layout."""
  bn = lambda c: 2 * c
  count = 9 * 3 * width + bn(width) + width  # stem conv, BN, PReLU
  cin = width
  for stage, n in enumerate(blocks):
    c = width * 2**stage
    for b in range(n):
      count += bn(cin) + 9 * cin * c + bn(c) + c + 9 * c * c + bn(c)
      if b == 0:
        count += cin * c + bn(c)
      cin = c
  count += bn(cin) + cin * (size // 16) ** 2 * features + features  # head BN, fc
  return count + features  # features BN: bias only (its weight is fixed to 1)


@pytest.mark.parametrize("arch", ["r18", "r50"])
def test_parameter_count_matches_layout(arch):
  shapes = jax.eval_shape(iresnet(arch).init, jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert count == layout_parameter_count(ARCHS[arch])
  assert "scale" not in shapes["params"]["features"]


def arcface_fixture():
  """(variables, recorded outputs) of the fixture, as nested dicts keyed by its paths."""
  tree = {}
  with np.load(ARCFACE) as data:
    for key in data.files:
      *parents, leaf = key.split("/")
      node = tree
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = data[key]
  return {"params": tree.pop("params"), "batch_stats": tree.pop("batch_stats")}, tree


def test_forward_equals_arcface_torch():
  model = IResNet(blocks=(2, 1, 1, 1), width=8, num_features=16)
  variables, recorded = arcface_fixture()
  images = jnp.asarray(recorded["input"])
  # Every variable of the model is in the fixture, and nothing else.
  abstract = jax.eval_shape(model.init, init_key(0), images)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda x: x.shape, abstract)
  layers = jax.jit(functools.partial(model.apply, capture=model.layers))(variables, images)
  for layer in model.layers:
    want = recorded["eval"][layer]
    # float32 sums in another order: a few ulps of the layer's scale, 3 orders of magnitude
    # below what a misplaced stride, BN or flatten order changes.
    scale = np.abs(want).max()
    np.testing.assert_allclose(layers[layer], want, atol=1e-5 * scale, rtol=0, err_msg=layer)
  trained, updated = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, images)
  want = recorded["train"]["embedding"]
  np.testing.assert_allclose(trained, want, atol=1e-5 * np.abs(want).max(), rtol=0)
  # Running statistics after one training pass, PyTorch's momentum 0.1. PyTorch moves the
  # variance towards the unbiased batch variance, flax's BatchNorm towards the biased one: the
  # update differs by (n - 1) / n, n the values per channel (B * H * W; 1 - 1/6272 at
  # arcface_torch's batch 128 of 7x7 maps, 1 - 1/128 for the features BN).
  def biased(torch_var, count, before):
    return 0.9 * before + (torch_var - 0.9 * before) * (count - 1) / count

  want = jax.tree.map(lambda stats, count, before: {
      "mean": stats["mean"], "var": biased(stats["var"], count, before["var"])},
      recorded["train_batch_stats"], recorded["train_count"], variables["batch_stats"],
      is_leaf=lambda node: isinstance(node, dict) and "mean" in node)
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
               updated["batch_stats"], want)


def test_capture_returns_named_layers_and_stops_early():
  variables = tiny_variables()
  x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  everything = apply(variables, x, capture=("stem", "stage1", "stage2", "stage3", "stage4",
                                            "embedding"))
  expected = {"stem": (2, 32, 32, 8), "stage1": (2, 16, 16, 8), "stage2": (2, 8, 8, 16),
              "stage3": (2, 4, 4, 32), "stage4": (2, 2, 2, 64), "embedding": (2, 16)}
  assert {k: v.shape for k, v in everything.items()} == expected
  np.testing.assert_allclose(everything["embedding"], apply(variables, x), rtol=1e-6)
  split = apply(variables, x, capture=("stage2",))
  assert set(split) == {"stage2"}
  np.testing.assert_allclose(split["stage2"], everything["stage2"], rtol=1e-6)
  # Stopping early means the layers after the split are never traced.
  jaxpr = str(jax.make_jaxpr(lambda v, x: TINY.apply(v, x, capture=("stage2",)))(variables, x))
  assert jaxpr.count("conv_general_dilated") < str(
      jax.make_jaxpr(lambda v, x: TINY.apply(v, x))(variables, x)).count("conv_general_dilated")


def test_training_updates_running_statistics_like_pytorch():
  # PyTorch BN momentum 0.1: running = 0.9 * running + 0.1 * batch statistic. Checked on the
  # features BN, whose input is recomputed here in numpy from the captured stage-4 map.
  variables = tiny_variables()
  x = np.random.default_rng(2).uniform(-1, 1, (6, SIZE, SIZE, 3)).astype(np.float32)
  _, updated = apply(variables, x, train=True)
  stage4, _ = apply(variables, x, train=True, capture=("stage4",))
  h = np.asarray(stage4["stage4"], np.float64)
  h = (h - h.mean((0, 1, 2))) / np.sqrt(h.var((0, 1, 2)) + 1e-5)  # head BN (scale 1, bias 0)
  flat = h.transpose(0, 3, 1, 2).reshape(len(h), -1)  # PyTorch's (C, H, W) flatten
  fc = variables["params"]["fc"]
  y = flat @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"])
  stats = updated["batch_stats"]["features"]
  np.testing.assert_allclose(stats["mean"], 0.1 * y.mean(0), atol=1e-4)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * y.var(0), atol=1e-4)


def test_embed_units_uint8_equivalence_vmap_and_single_compile():
  variables = tiny_variables()
  assert input_size(TINY, variables) == SIZE
  images = np.random.default_rng(3).integers(0, 256, (2, 3, 48, 48, 3), dtype=np.uint8)
  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(variables, images):
    return embed(TINY, variables, images)

  out = np.stack([fn(variables, jnp.asarray(batch)) for batch in images])
  assert out.shape == (2, 3, 16)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
  as_float = (images.astype(np.float32) - 127.5) / 127.5
  from_float = jax.jit(embed, static_argnums=0)(TINY, variables, jnp.asarray(as_float[0]))
  np.testing.assert_allclose(from_float, out[0], atol=1e-5)
  batched = jax.jit(jax.vmap(functools.partial(embed, TINY), in_axes=(None, 0)))(variables, images)
  np.testing.assert_allclose(batched, out, atol=1e-5)
  resized = preprocess(jnp.asarray(images[0]), SIZE)
  assert resized.shape == (3, SIZE, SIZE, 3) and -1 <= resized.min() <= resized.max() <= 1


def test_split_halves_compose_to_the_whole_network():
  variables = tiny_variables()
  images = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, SIZE, SIZE, 3)), jnp.float32)
  whole = TINY.apply(variables, images, capture=TINY.layers)
  for cut in TINY.layers[:-1]:
    np.testing.assert_allclose(TINY.apply(variables, whole[cut], start=cut), whole["embedding"],
                               atol=1e-4, err_msg=cut)
  for before, after in zip(TINY.layers[:-1], TINY.layers[1:]):
    block = TINY.apply(variables, whole[before], start=before, capture=(after,))
    np.testing.assert_allclose(block[after], whole[after], atol=1e-4, err_msg=after)


def test_bad_inputs_are_rejected():
  variables = tiny_variables()
  with pytest.raises(ValueError, match="divisible by 16"):
    TINY.apply(variables, jnp.zeros((1, 40, 40, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    TINY.apply(variables, jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match="unknown layer"):
    TINY.apply(variables, jnp.zeros((1, 32, 32, 3)), capture=("layer9",))
  with pytest.raises(ValueError, match="at or before start"):
    TINY.apply(variables, jnp.zeros((1, 16, 16, 8)), start="stage1", capture=("stem",))
  with pytest.raises(ValueError, match="nothing runs after"):
    TINY.apply(variables, jnp.zeros((1, 16)), start="embedding")
  with pytest.raises(ValueError, match="unknown IResNet arch"):
    iresnet("r7")
