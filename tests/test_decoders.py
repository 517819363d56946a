"""Feature decoders, their losses and synthetic inputs: shapes, closed-form inverses, numpy."""

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmia import parallel
from gmia.inversion import decoder_losses, decoder_synthesis, decoder_training, priors
from gmia.models import classifiers, decoders, split
from gmia.models.iresnet import IResNet, init_key

SIZE = 32
TINY = IResNet(blocks=(1, 1, 1, 1), width=4, num_features=16)


@functools.cache
def tiny_network() -> split.Network:
  variables = jax.jit(TINY.init)(init_key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  return split.Network(TINY, variables, SIZE)


def make_decoder(network: split.Network, layer: str) -> decoders.Decoder:
  """The decoder of `layer` as the trainer builds it, with width 8."""
  specs = decoders.decoder_specs(network, [layer])
  return decoders.make_decoders(specs, {"width": 8, "depth": 1})[layer]


@jax.jit
def perturbed(params, key, scale=0.1):
  """Params with noise added everywhere (fresh decoders have zero output convs)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return tree.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_decoder_shapes_for_every_layer_of_a_tiny_iresnet():
  net = tiny_network()
  shapes = split.feature_shapes(TINY, net.variables, SIZE)
  images = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3), minval=-1, maxval=1)
  acts = jax.jit(functools.partial(TINY.apply, capture=TINY.layers))(net.variables, images)
  assert shapes == {name: acts[name].shape[1:] for name in TINY.layers}
  for index, layer in enumerate(TINY.layers):
    decoder = make_decoder(net, layer)
    assert decoder.feature_shape == shapes[layer] and len(decoder.blocks) == index + 1
    params = jax.eval_shape(decoder.init, jax.random.key(1), acts[layer])
    outputs = jax.eval_shape(functools.partial(decoder.apply, intermediates=True), params,
                             acts[layer])
    # Block k of the chain reconstructs the activations one layer shallower; the image last.
    expected = [shapes[TINY.layers[i - 1]] for i in range(index, 0, -1)] + [(SIZE, SIZE, 3)]
    assert [o.shape[1:] for o in outputs] == expected
  # Computed for real: the stem decoder (tanh image block) and the dense block of the embedding.
  stem = make_decoder(net, "stem")
  params = perturbed(jax.jit(stem.init)(jax.random.key(1), acts["stem"]), jax.random.key(2))
  decoded = jax.jit(stem.apply)(params, acts["stem"])
  assert decoded.shape == images.shape and 0 < float(jnp.abs(decoded).max()) <= 1.0
  dense = decoders.Decoder(decoder.blocks[:1], width=8, to_image=False)  # embedding -> stage4
  dense_params = perturbed(jax.jit(dense.init)(jax.random.key(1), acts["embedding"]),
                           jax.random.key(2))
  stage4 = jax.jit(dense.apply)(dense_params, acts["embedding"])
  assert stage4.shape == (2, *shapes["stage4"]) and np.all(np.isfinite(stage4))
  with pytest.raises(ValueError, match="features must be"):
    jax.eval_shape(stem.apply, params, jnp.zeros((2, 8)))


def test_decoder_shapes_for_a_classifier():
  model = classifiers.ResNetClassifier(num_classes=5, widths=(4, 8, 8))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  for layer, shape in split.feature_shapes(model, variables, 16).items():
    decoder = make_decoder(split.Network(model, variables, 16), layer)
    features = jnp.zeros((3, *shape))
    params = jax.eval_shape(decoder.init, jax.random.key(1), features)
    assert jax.eval_shape(decoder.apply, params, features).shape == (3, 16, 16, 3)


def test_chain_and_shape_errors_are_named():
  shapes = {"a": (8, 8, 4), "b": (3, 3, 4)}
  with pytest.raises(ValueError, match="unknown layer"):
    decoders.inverse_chain(("a", "b"), shapes, 8, "c")
  with pytest.raises(ValueError, match="power of two"):
    decoders.InverseBlock((8, 8, 4), (3, 3, 4)).init(jax.random.key(0), jnp.zeros((1, 3, 3, 4)))


class LinearNet(nn.Module):
  """Split-protocol network of two linear blocks: "lift" (3x3 conv, 3 -> 4 channels) and "mix",
  a conv with kernel = stride = `stride` and 4 * stride^2 outputs: an invertible linear map of
  every stride x stride patch, whose inverse numpy computes exactly."""
  stride: int = 1
  layers: ClassVar[tuple[str, ...]] = ("lift", "mix")

  @nn.compact
  def __call__(self, x, train=False, capture=(), start=None):
    out = {}
    if start is None:
      x = nn.Conv(4, (3, 3), use_bias=False, name="lift")(x)
      out["lift"] = x
      if tuple(capture) == ("lift",):
        return out
    s = self.stride
    out["mix"] = nn.Conv(4 * s * s, (s, s), strides=s, padding="VALID", use_bias=False,
                         name="mix")(x)
    return {name: out[name] for name in capture} if capture else out["mix"]


def mix_inverse(kernel: np.ndarray, outputs: np.ndarray, stride: int) -> np.ndarray:
  """The exact input of the "mix" conv: every output vector solves for its input patch."""
  b, h, w, c = outputs.shape
  matrix = kernel.reshape(-1, c).astype(np.float64)  # patch (row-major i, j, channel) -> output
  patches = np.linalg.solve(matrix.T, outputs.reshape(-1, c).T.astype(np.float64)).T
  patches = patches.reshape(b, h, w, stride, stride, 4).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(b, h * stride, w * stride, 4)


def test_inverse_block_learns_a_linear_block_whose_inverse_is_known():
  stride = 2  # Exercises the transposed-conv and upsampling paths.
  model = LinearNet(stride)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  # An orthogonal patch map: invertible and well conditioned.
  n = 4 * stride * stride
  q, _ = np.linalg.qr(np.random.default_rng(stride).normal(size=(n, n)))
  variables = {"params": {**variables["params"],
                          "mix": {"kernel": jnp.asarray(q.reshape(stride, stride, 4, n),
                                                        jnp.float32)}}}
  network = split.Network(model, variables, 8)
  shapes = split.feature_shapes(model, variables, 8)
  chain = decoders.inverse_chain(model.layers, shapes, 8, "mix")
  block = decoders.Decoder(chain[:1], width=8, to_image=False)
  tx = optax.adam(optax.cosine_decay_schedule(0.01, 150))
  step = jax.jit(decoder_training.make_block_step(
      network, {"invert_mix": block}, tx, parallel.make_mesh(), batch_size=16, seed=0,
      noise_fraction=1.0, cycle_weight=1.0))
  params = {"invert_mix": block.init(jax.random.key(1), jnp.zeros((1, *shapes["mix"])))["params"]}
  test_images = decoder_synthesis.noise_images(jax.random.key(99), 8, 8)
  layer_stats = decoder_training.layer_statistics(network, variables, test_images, ("mix",))
  state = jax.device_put({"blocks": params, "block_opt": tx.init(params),
                          "layer_stats": layer_stats, "pool": jnp.zeros((0, 8, 8, 3)),
                          "step": jnp.zeros((), jnp.int32)},
                         parallel.replicated(parallel.make_mesh()))
  stats = block.statistics(model.layers, layer_stats)

  acts = model.apply(variables, test_images, capture=("lift", "mix"))
  exact = mix_inverse(np.asarray(variables["params"]["mix"]["kernel"]), np.asarray(acts["mix"]),
                      stride)
  np.testing.assert_allclose(exact, acts["lift"], atol=1e-4)  # The closed form is right.

  def error(state):
    learned = block.apply({"params": state["blocks"]["invert_mix"], "stats": stats}, acts["mix"])
    return float(np.sum((np.asarray(learned) - exact) ** 2) / np.sum(exact ** 2))

  before = error(state)
  for _ in range(150):
    state, logged = step(state, None, {"variables": variables})
  after = error(state)
  assert after < 0.02 and after < before / 50, (before, after)
  # An orthogonal block preserves distances: its cycle error is its reconstruction error.
  np.testing.assert_allclose(logged["invert_mix/cycle"], logged["invert_mix/error"], rtol=1e-3)


def test_losses_match_direct_computation():
  net = tiny_network()
  images = decoder_synthesis.noise_images(jax.random.key(3), 4, SIZE)
  run = jax.jit(TINY.apply, static_argnames=("capture", "start"))
  acts = run(net.variables, images, capture=("stem", "stage1"))
  decoder = make_decoder(net, "stage1")
  params = perturbed(decoder.init(jax.random.key(1), acts["stage1"])["params"],
                     jax.random.key(4))
  stats = decoder.statistics(TINY.layers, decoders.activation_statistics(acts))
  variables = {"params": params, "stats": stats}
  rel = lambda a, b: np.mean([np.sum((x - y) ** 2) / np.sum(y ** 2) for x, y in
                              zip(np.asarray(a, np.float64), np.asarray(b, np.float64))])

  # Chain: features -> reconstructed stem activations -> image.
  mid, image = jax.jit(functools.partial(decoder.apply, intermediates=True))(variables,
                                                                             acts["stage1"])
  again = run(net.variables, image, capture=("stage1",))["stage1"]
  inputs = split.block_inputs(net, acts, images)
  loss, terms = jax.jit(functools.partial(decoder_losses.cycle_loss, decoder, network=net,
                                          cycle_weight=0.7, block_weight=0.3))(
      variables, net_vars=net.variables, features=acts["stage1"], inputs=inputs)
  cycle = rel(again, acts["stage1"])
  blocks = (rel(mid, acts["stem"]) + rel(image, images)) / 2
  np.testing.assert_allclose(terms["cycle"], cycle, rtol=1e-4)
  np.testing.assert_allclose(terms["blocks"], blocks, rtol=1e-4)
  np.testing.assert_allclose(loss, 0.7 * cycle + 0.3 * blocks, rtol=1e-4)
  assert cycle > 0.01 and blocks > 0.01

  # One inverse block alone: stage1 -> stem, its cycle through the stage1 block only.
  block = decoders.Decoder(decoder.blocks[:1], width=8, to_image=False)
  block_variables = {name: {"invert_stage1": tree["invert_stage1"]}
                     for name, tree in variables.items()}
  loss, terms = jax.jit(functools.partial(decoder_losses.block_loss, block, network=net,
                                          cycle_weight=2.0))(
      block_variables, net_vars=net.variables, inputs=acts["stem"], outputs=acts["stage1"])
  rerun = run(net.variables, mid, start="stem", capture=("stage1",))["stage1"]
  np.testing.assert_allclose(loss, rel(mid, acts["stem"]) + 2.0 * rel(rerun, acts["stage1"]),
                             rtol=1e-4)

  loss, terms = jax.jit(functools.partial(decoder_losses.aux_loss, decoder, network=net,
                                          feature_weight=0.5))(
      variables, net_vars=net.variables, features=acts["stage1"], images=images)
  pixel = np.mean((np.asarray(image, np.float64) - np.asarray(images)) ** 2)
  np.testing.assert_allclose(loss, pixel + 0.5 * cycle, rtol=1e-4)


def test_decoders_work_in_the_units_of_each_layer():
  rng = np.random.default_rng(0)
  acts = {"a": jnp.asarray(rng.normal(2.0, 3.0, (5, 4, 4, 2)), jnp.float32),
          "b": jnp.asarray(rng.normal(-1.0, 0.5, (5, 2, 2, 3)) * [1, 1, 0], jnp.float32)}
  stats = decoders.activation_statistics(acts)
  flat = np.asarray(acts["a"], np.float64).reshape(-1, 2)
  np.testing.assert_allclose(stats["a"]["mean"], flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["a"]["std"], flat.std(0), rtol=1e-5)
  std_b = np.asarray(acts["b"], np.float64).reshape(-1, 3).std(0)
  np.testing.assert_allclose(stats["b"]["std"], [*std_b[:2], 0.01 * std_b.mean()], rtol=1e-5)
  # A chain b -> a -> image: features and statistics scaled together decode the same image, and
  # the intermediate reconstruction comes out in layer a's units.
  decoder = decoders.Decoder((("b", (4, 4, 2), (2, 2, 3)), ("a", (8, 8, 3), (4, 4, 2))), width=4)
  params = perturbed(decoder.init(jax.random.key(0), acts["b"])["params"], jax.random.key(1))
  scaled = {name: {"mean": 10 * s["mean"], "std": 10 * s["std"]} for name, s in stats.items()}
  apply = jax.jit(functools.partial(decoder.apply, intermediates=True))
  plain = apply({"params": params, "stats": decoder.statistics(("a", "b"), stats)}, acts["b"])
  tenfold = apply({"params": params, "stats": decoder.statistics(("a", "b"), scaled)},
                  10 * acts["b"])
  np.testing.assert_allclose(tenfold[1], plain[1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(tenfold[0], 10 * plain[0], rtol=1e-4, atol=1e-4)


def test_noise_images_and_synthetic_batches():
  images = decoder_synthesis.noise_images(jax.random.key(0), 64, SIZE)
  assert images.shape == (64, SIZE, SIZE, 3) and float(jnp.abs(images).max()) <= 1.0
  np.testing.assert_array_equal(images, decoder_synthesis.noise_images(jax.random.key(0), 64,
                                                                       SIZE))
  # Coarse levels make smooth images: neighbouring pixels differ far less than in white noise.
  tv = np.asarray(priors.total_variation(images))
  white = np.asarray(priors.total_variation(jnp.clip(0.5 * jax.random.normal(
      jax.random.key(1), images.shape), -1, 1)))
  assert tv.min() < white.mean() / 10 and tv.max() > white.mean() / 2
  pool = jnp.full((3, SIZE, SIZE, 3), 0.25)
  batch = decoder_synthesis.synthetic_batch(jax.random.key(2), pool, 8, SIZE, 0.5)
  assert batch.shape == (8, SIZE, SIZE, 3)
  np.testing.assert_allclose(batch[4:], 0.25)  # Half from the pool, half fresh noise.
  assert float(jnp.std(batch[:4])) > 0.05
  noise_only = decoder_synthesis.synthetic_batch(jax.random.key(2), pool[:0], 8, SIZE, 0.5)
  assert noise_only.shape == (8, SIZE, SIZE, 3)


def test_deep_inversion_images_match_batch_norm_statistics_better_than_noise():
  net = tiny_network()
  # Running statistics of a known "training set": smooth, bright images (BatchNorm momentum 0.9,
  # so 60 updates leave 0.9^60 of the initial statistics).
  data = 0.5 * decoder_synthesis.noise_images(jax.random.key(7), 64, SIZE, scale=0.3) + 0.3
  update = jax.jit(lambda v: {**v, **TINY.apply(v, data, train=True, mutable=["batch_stats"])[1]})
  variables = net.variables
  for _ in range(60):
    variables = update(variables)
  settings = decoder_synthesis.SynthesisSettings(num_images=8, batch_size=8, num_steps=40,
                                                 learning_rate=0.05, tv_weight=0.0,
                                                 l2_weight=0.0, jitter=0)
  synthesised = decoder_synthesis.deep_inversion_images(TINY, variables, SIZE, settings,
                                                        jax.random.key(5))
  assert synthesised.shape == (8, SIZE, SIZE, 3) and float(jnp.abs(synthesised).max()) <= 1.0
  start = decoder_synthesis.noise_images(jax.random.split(jax.random.split(
      jax.random.key(5), 1)[0])[0], 8, SIZE)  # The start image of the only batch.

  def bn_loss(images):
    _, moments = priors.batch_norm_statistics(TINY, variables, images, train=False)
    return float(priors.batch_norm_loss(moments))

  assert bn_loss(synthesised) < 0.25 * bn_loss(start)
  with pytest.raises(ValueError, match="multiple of batch_size"):
    decoder_synthesis.SynthesisSettings(num_images=10, batch_size=4)
