"""Feature inversion of split networks: layer-1 features give the face back, for the IResNet and
the ResNet classifier; the generator prior recovers G(w*) from the features of G(w*)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia import metrics
from gmia.data import synthetic
from gmia.models.preprocessing import preprocess
from gmia.inversion import features, latent, priors
from gmia.models import iresnet, stylegan
from gmia.models.classifiers import ResNetClassifier

SETTINGS = features.FeatureInversionSettings(layer="stage1", num_steps=300)
CLASSIFIER = ResNetClassifier(num_classes=8, widths=(8, 16, 32))
# The generator prior: a tiny 16 px generator seen by the classifier at 32 px.
G_RESOLUTION = 16
PRIOR = features.FeatureInversionSettings(layer="stage1", num_steps=100, w_avg_samples=256,
                                          bn_weight=0.0)


def faces(num: int) -> jax.Array:
  images, _, _ = synthetic.render_identities(np.arange(num), 1, 32, seed=0)
  return jnp.asarray((images.astype(np.float32) - 127.5) / 127.5)


@pytest.fixture(scope="module")
def split_network():
  """Width 16: stage 1 sends 16x16x16 values for a 32x32x3 face, more than the face holds."""
  images = faces(3)
  model = iresnet.IResNet(blocks=(1, 1, 1, 1), width=16, num_features=16)
  variables = model.init(iresnet.init_key(0), images[:1])
  observed = model.apply(variables, images, train=False, capture=("stage1",))["stage1"]
  keys = jax.random.split(jax.random.key(0), len(images))
  out = features.make_feature_inverter(model, SETTINGS)(variables, observed, keys)
  return model, variables, images, observed, keys, out


@pytest.fixture(scope="module")
def classifier_variables():
  return jax.jit(CLASSIFIER.init)(iresnet.init_key(1), jnp.zeros((1, 32, 32, 3)))


def test_layer_one_features_invert_to_the_face(split_network):
  """Measured on CPU: PSNR 23.7 to 31.8 dB after 300 steps; a blank image scores 13 to 16 dB."""
  model, variables, images, observed, _, out = split_network
  quality = np.asarray(metrics.psnr(out["images"], images))
  blank = np.asarray(metrics.psnr(jnp.zeros_like(images), images))
  assert np.all(quality > 20.0), quality
  assert np.all(quality > blank + 7.0), (quality, blank)
  assert np.all(np.abs(np.asarray(out["images"])) <= 1.0)
  recomputed = model.apply(variables, out["images"], train=False, capture=("stage1",))["stage1"]
  np.testing.assert_allclose(out["feature_distance"], priors.feature_distance(recomputed, observed),
                             rtol=1e-3)
  assert np.all(out["loss"][:, -1] < 0.05 * out["loss"][:, 0])
  assert np.all(out["feature_distance"] < 0.05 * out["start_feature_distance"])


def test_batch_equals_one_target_at_a_time(split_network):
  model, variables, _, observed, keys, out = split_network
  single = features.make_feature_inverter(model, SETTINGS)(variables, observed[1:2], keys[1:2])
  np.testing.assert_allclose(single["images"][0], out["images"][1], atol=1e-4)


def test_classifier_stem_features_invert_to_the_face(classifier_variables):
  """Any split network: the ResNet classifier's stem (conv, BN, ReLU: 32x32x8 for 32x32x3).
  Measured on CPU: PSNR 34.4 and 34.7 dB after 150 steps; a blank image scores 13.0 and 13.2."""
  images = faces(2)
  observed = CLASSIFIER.apply(classifier_variables, images, capture=("stem",))["stem"]
  settings = features.FeatureInversionSettings(layer="stem", num_steps=150)
  out = features.make_feature_inverter(CLASSIFIER, settings)(
      classifier_variables, observed, jax.random.split(jax.random.key(2), 2))
  quality = np.asarray(metrics.psnr(out["images"], images))
  blank = np.asarray(metrics.psnr(jnp.zeros_like(images), images))
  assert np.all(quality > 28.0) and np.all(quality > blank + 15.0), (quality, blank)


@pytest.fixture(scope="module")
def tiny_generator():
  """A 16 px generator and targets G(w*) of mapped random latents (its fixed noise maps)."""
  generator = stylegan.Generator(z_dim=8, w_dim=8, img_resolution=G_RESOLUTION, mapping_layers=2,
                                 channel_base=256, channel_max=16)
  g_vars = jax.jit(lambda: generator.init(
      {"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros((1, 8))))()
  ws_true = generator.apply(g_vars, jax.random.normal(jax.random.key(5), (2, 8)),
                            method=generator.map)
  targets = generator.apply(g_vars, ws_true, "const", method=generator.synthesize)
  return generator, g_vars, ws_true, targets


@pytest.fixture(scope="module")
def prior_run(tiny_generator, classifier_variables):
  generator, g_vars, _, targets = tiny_generator
  observed = CLASSIFIER.apply(classifier_variables, jnp.clip(preprocess(targets, 32), -1, 1),
                              capture=("stage1",))["stage1"]
  keys = latent.target_keys(0, range(2))
  invert = features.make_feature_inverter(CLASSIFIER, PRIOR, generator=generator)
  return invert, observed, keys, invert(classifier_variables, observed, keys, g_vars)


def test_generator_prior_recovers_the_generated_face(tiny_generator, classifier_variables,
                                                     prior_run):
  """From w_avg, the features of G(w*) lead back to G(w*). Measured on CPU: pixel MSE falls
  from 0.30 and 0.35 at G(w_avg) to 7e-5 and 3e-5 after 100 steps; the feature distance from
  0.42 and 0.45 to 1e-4 and 5e-5."""
  generator, g_vars, ws_true, targets = tiny_generator
  _, observed, _, out = prior_run
  assert out["images"].shape == (2, 32, 32, 3) and out["ws"].shape == ws_true.shape
  expected = np.clip(preprocess(targets, 32), -1, 1)
  # The images are G(ws) as the network sees them (resized, clipped).
  rendered = generator.apply(g_vars, out["ws"], "const", method=generator.synthesize)
  np.testing.assert_allclose(out["images"], np.clip(preprocess(rendered, 32), -1, 1), atol=1e-5)
  # The start is G(w_avg), w_avg estimated as the projector does.
  w_avg, _ = latent.latent_statistics(generator, g_vars, jax.random.key(0), PRIOR.w_avg_samples)
  start = generator.apply(g_vars, jnp.broadcast_to(w_avg, ws_true.shape), "const",
                          method=generator.synthesize)
  start = np.clip(preprocess(start, 32), -1, 1)
  start_features = CLASSIFIER.apply(classifier_variables, start, capture=("stage1",))["stage1"]
  np.testing.assert_allclose(out["start_feature_distance"],
                             priors.feature_distance(start_features, observed), rtol=1e-3)
  error = np.mean((np.asarray(out["images"]) - expected) ** 2, axis=(1, 2, 3))
  start_error = np.mean((start - expected) ** 2, axis=(1, 2, 3))
  assert np.all(error < 2e-3 * start_error), (error, start_error)
  assert np.all(out["feature_distance"] < 2e-3 * out["start_feature_distance"])


def test_generator_prior_batch_equals_one_target_at_a_time(tiny_generator, classifier_variables,
                                                           prior_run):
  _, g_vars, _, _ = tiny_generator
  invert, observed, keys, out = prior_run
  single = invert(classifier_variables, observed[1:], keys[1:], g_vars)
  for name in ("ws", "images", "loss"):
    np.testing.assert_allclose(single[name][0], out[name][1], rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named(split_network, tiny_generator):
  model, variables, _, observed, keys, _ = split_network
  with pytest.raises(ValueError, match="unknown layer"):
    features.make_feature_inverter(model, features.FeatureInversionSettings(layer="logits"))
  with pytest.raises(ValueError, match="num_steps"):
    features.FeatureInversionSettings(num_steps=0)
  invert = features.make_feature_inverter(model, SETTINGS)
  with pytest.raises(ValueError, match=r"f32\[B, 16, 16, 16\] for 32 px inputs"):
    invert(variables, observed[..., :8], keys)
  with pytest.raises(ValueError, match="no square input gives features"):
    invert(variables, observed[:, :5, :5], keys)
  with pytest.raises(ValueError, match="one key per target"):
    invert(variables, observed, keys[:2])
  generator, g_vars, _, _ = tiny_generator
  with pytest.raises(ValueError, match="g_vars"):
    invert(variables, observed, keys, g_vars)
  with pytest.raises(ValueError, match="g_vars"):
    features.make_feature_inverter(model, SETTINGS, generator=generator)(variables, observed, keys)


def test_image_size_per_layer(split_network, classifier_variables):
  model, variables, *_ = split_network
  assert features.image_size(model, variables, "stem", (32, 32, 16)) == 32
  assert features.image_size(model, variables, "stage3", (4, 4, 64)) == 32
  assert features.image_size(model, variables, "embedding", (16,)) == 32
  assert features.image_size(CLASSIFIER, classifier_variables, "stage2", (16, 16, 16)) == 32
  assert features.image_size(CLASSIFIER, classifier_variables, "stage3", (12, 12, 32)) == 48
  with pytest.raises(ValueError, match="global pooling"):
    features.image_size(CLASSIFIER, classifier_variables, "logits", (8,))
