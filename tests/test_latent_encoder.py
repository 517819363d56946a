"""Latent encoder: shapes, training on a generator's own samples, resume, checkpoint mismatches,
and the projection started from given latents (true w*, the encoder's guess) against w_avg."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.checkpoint import Checkpointer
from gmia.gan import train_step
from gmia.inversion import latent, latent_encoder_training as training
from gmia.jobs import reconstruction
from gmia.models import stylegan
from gmia.models.latent_encoder import (LatentEncoder, check_matches_generator,
                                        with_latent_statistics)
from gmia.runs import load_run
from gmia.training import EVAL_FILE
from tests.resume_check import check_resume
from train.configs import gan_tiny

RESOLUTION, W_DIM = 16, 8
NUM_STEPS = 160
# W, no noise: the pixel error is a function of w alone, so starts compare cleanly.
FEW_STEPS = latent.ProjectionSettings(num_steps=12, noise_mode="none", w_avg_samples=512)


def save_generator(workdir: str, resolution: int, w_dim: int, zeros: bool = False) -> None:
  """A freshly initialised tiny generator (all weights zero with `zeros`), checkpointed as the
  GAN trainer does. No training: the encoder only needs some fixed map from w to images."""
  config = gan_tiny.get_config()
  config.data.resolution = resolution
  config.model.update(z_dim=w_dim, w_dim=w_dim, channel_base=128, channel_max=16)
  models = train_step.build_models(config)
  init = lambda: train_step.init_state(config, models)
  if zeros:
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(init))
  else:
    state = jax.jit(init).lower().compile({"xla_backend_optimization_level": 0})()
  checkpointer = Checkpointer(workdir)
  checkpointer.save(1, state, {"kind": "gan", "config": json.loads(config.to_json())})
  checkpointer.wait()
  checkpointer.close()


def encoder_config(generator_workdir: str):
  config = training.default_config()
  config.generator = f"gmia:{generator_workdir}"
  config.batch_size, config.num_steps = 16, NUM_STEPS
  config.model.update(channel_base=128, channel_max=32, hidden=64)
  config.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  config.statistics_samples, config.eval_samples = 1024, 64
  config.log_every, config.eval_every, config.checkpoint_every = 40, 80, NUM_STEPS // 2
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(generator workdir, encoder workdir, config, final metrics) of one short training run."""
  root = tmp_path_factory.mktemp("latent_encoder")
  save_generator(str(root / "gan"), RESOLUTION, W_DIM)
  config = encoder_config(str(root / "gan"))
  metrics = training.train_and_evaluate(config, str(root / "encoder")).metrics
  return str(root / "gan"), str(root / "encoder"), config, metrics


@pytest.fixture(scope="module")
def targets(run):
  """(generator, g_vars, true ws f32[4, w_dim], targets G(w) f32[4, R, R, 3]) held out."""
  gan = load_run(run[0], "gan")
  generator, g_vars = gan.model, gan.variables
  ws = map_latents(generator, g_vars, jax.random.normal(jax.random.key(99), (4, W_DIM)))
  return generator, g_vars, ws, synthesize(generator, g_vars, ws)


@functools.partial(jax.jit, static_argnums=0)
def map_latents(generator, g_vars, z):
  """w f32[B, w_dim] of latents z f32[B, z_dim]."""
  return generator.apply(g_vars, z, method=generator.map)[:, 0]


@functools.partial(jax.jit, static_argnums=0)
def synthesize(generator, g_vars, ws):
  """G without noise at w f32[B, w_dim] or ws f32[B, num_ws, w_dim]."""
  if ws.ndim == 2:
    ws = jnp.broadcast_to(ws[:, None], (ws.shape[0], stylegan.num_ws(RESOLUTION), ws.shape[1]))
  return generator.apply(g_vars, ws, "none", method=generator.synthesize)


def test_shapes_and_untrained_encoder_predicts_w_avg():
  images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
  w_avg, w_std = jnp.arange(8.0), jnp.full((8,), 2.0)
  for w_plus, shape in ((False, (3, 8)), (True, (3, stylegan.num_ws(16), 8))):
    encoder = LatentEncoder(resolution=16, w_dim=8, w_plus=w_plus, channel_base=64)
    variables = with_latent_statistics(jax.jit(encoder.init)(jax.random.key(1), images), w_avg,
                                       w_std)
    w = encoder.apply(variables, images)
    assert w.shape == shape
    np.testing.assert_array_equal(w, np.broadcast_to(w_avg, shape))  # Zero-initialised head.
  with pytest.raises(ValueError, match="16, 16, 3"):
    encoder.apply(variables, images[:, :8, :8])


def test_training_learns_w_from_generator_samples(run, targets):
  """Measured on CPU: after 160 steps the held-out w error is 0.08 of the w_avg prediction's,
  the pixel MSE of G(E(x)) 0.04 of G(w_avg)'s."""
  gan_workdir, encoder_workdir, config, metrics = run
  generator, g_vars, ws, images = targets
  latent = load_run(encoder_workdir, "latent_encoder")
  check_matches_generator(latent.model, generator)
  encoder, e_vars = latent.model, latent.variables
  # Latent statistics against numpy over the same mapped latents.
  z = jax.random.normal(jax.random.key(0), (config.statistics_samples, W_DIM))
  mapped = np.asarray(map_latents(generator, g_vars, z), np.float64)
  np.testing.assert_allclose(e_vars["buffers"]["w_avg"], mapped.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(e_vars["buffers"]["w_std"], mapped.std(0), rtol=1e-4)
  # The held-out error, recomputed in numpy from the encoder's predictions.
  error = lambda w: np.mean(((np.asarray(w) - np.asarray(ws)) / mapped.std(0)) ** 2)
  predicted = error(encoder.apply(e_vars, images))
  at_w_avg = error(np.broadcast_to(mapped.mean(0), ws.shape))
  assert predicted < 0.3 * at_w_avg, (predicted, at_w_avg)
  assert metrics["w_error"] < 0.3 * metrics["w_error_w_avg"], metrics
  assert metrics["image_mse"] < 0.3 * metrics["image_mse_w_avg"], metrics
  with open(os.path.join(encoder_workdir, EVAL_FILE)) as handle:
    assert json.load(handle) == pytest.approx(metrics)


def test_resume_runs_only_the_remaining_steps(run, tmp_path):
  gan_workdir, encoder_workdir, config, metrics = run
  resumed = str(tmp_path / "resumed")
  check_resume(training.train_and_evaluate, config, encoder_workdir, resumed)
  with open(os.path.join(resumed, EVAL_FILE)) as handle:
    assert json.load(handle) == pytest.approx(metrics)
  changed = encoder_config(gan_workdir)
  changed.model.hidden = 32
  with pytest.raises(ValueError, match="another config: model.hidden"):
    training.train_and_evaluate(changed, resumed)


def test_mismatched_generator_and_encoder_are_named(run, tmp_path):
  gan_workdir, encoder_workdir, config, _ = run
  for resolution, w_dim, message in ((8, W_DIM, "16 px .* 8 px"), (RESOLUTION, 4, "w_dim=8 .* 4")):
    generator = stylegan.Generator(z_dim=w_dim, w_dim=w_dim, img_resolution=resolution)
    with pytest.raises(ValueError, match=message):
      check_matches_generator(load_run(encoder_workdir, "latent_encoder").model, generator)
    with pytest.raises(ValueError, match=message):
      training.encoder_start(encoder_workdir, generator)
  other = str(tmp_path / "other_gan")
  save_generator(other, RESOLUTION, 4, zeros=True)
  copy = str(tmp_path / "copy")
  shutil.copytree(encoder_workdir, copy)
  with pytest.raises(ValueError, match="trained from another generator"):
    training.train_and_evaluate(encoder_config(other), copy)
  # The same generator moved elsewhere is the same generator: the run continues.
  moved = str(tmp_path / "moved_gan")
  shutil.copytree(gan_workdir, moved)
  assert training.train_and_evaluate(encoder_config(moved), copy).steps_run == 0
  job = reconstruction.default_config()
  job.generator = job.reference_generator = f"gmia:{gan_workdir}"
  job.latent_encoder_workdir = encoder_workdir
  with pytest.raises(ValueError, match="reference_latent_encoder_workdir"):
    reconstruction.run(job, str(tmp_path / "job"))


@pytest.fixture(scope="module")
def few_steps(targets):
  """(project, keys, result from w_avg) of the W projection with FEW_STEPS on the targets."""
  generator, g_vars, _, images = targets
  project = latent.make_projector(generator, FEW_STEPS)
  keys = latent.target_keys(0, range(len(images)))
  return project, keys, project(g_vars, None, images, keys)


def test_projection_from_true_latent_stays_at_the_target(targets, few_steps):
  """Starts exactly at the target; Adam's normalised steps (size ~ the learning rate, even on a
  vanishing gradient) move it a little (measured: mean pixel MSE 0.02 of the w_avg start's)."""
  generator, g_vars, ws, images = targets
  project, keys, from_avg = few_steps
  out = project(g_vars, None, images, keys, ws)
  np.testing.assert_allclose(out["start_mse"], 0.0, atol=1e-10)
  assert np.all(from_avg["start_mse"] > 0.05)
  assert np.mean(out["pixel_mse"]) < 0.1 * np.mean(from_avg["pixel_mse"]), (
      out["pixel_mse"], from_avg["pixel_mse"])
  with pytest.raises(ValueError, match="start_ws"):
    project(g_vars, None, images, keys, ws[:3])
  with pytest.raises(ValueError, match="start_ws"):  # W+ starts for a W projection.
    project(g_vars, None, images, keys, jnp.broadcast_to(ws[:, None], (4, 6, W_DIM)))
  with pytest.raises(ValueError, match="NaN"):
    project(g_vars, None, images, keys, ws.at[1, 2].set(jnp.nan))


def test_encoder_start_beats_w_avg_start_at_equal_steps(run, targets, few_steps):
  """Measured on CPU after 12 steps: mean pixel MSE 17x lower from the encoder's guess."""
  generator, g_vars, _, images = targets
  project, keys, from_avg = few_steps
  start = training.encoder_start(run[1], generator)(images)
  from_encoder = project(g_vars, None, images, keys, start)
  assert np.all(from_encoder["start_mse"] < from_avg["start_mse"])
  assert np.mean(from_encoder["pixel_mse"]) < 0.3 * np.mean(from_avg["pixel_mse"]), (
      from_encoder["pixel_mse"], from_avg["pixel_mse"])
  # Each target depends on its own start and key alone: replacing the last two (by each
  # other, with their starts and keys) leaves the first two as they were.
  order = np.array([0, 1, 3, 2])
  other = project(g_vars, None, images[order], keys[order], start[order])
  for name in ("ws", "images", "loss", "start_mse"):
    np.testing.assert_allclose(other[name], from_encoder[name][order], rtol=1e-4, atol=1e-6)


def test_w_plus_projection_starts_per_layer(targets):
  """W+ starts f32[B, num_ws, w_dim] are where the optimisation begins: with a vanishing
  learning rate and no added noise the result is the start, exactly at the target for the true
  w* (first two targets), and with the start error of G at the start for ws with one layer moved
  off w* (last two)."""
  generator, g_vars, ws, images = targets
  settings = latent.ProjectionSettings(num_steps=2, w_plus=True, noise_mode="none",
                                       w_avg_samples=64, initial_noise_factor=0.0,
                                       initial_learning_rate=1e-9)
  layers = stylegan.num_ws(RESOLUTION)
  start = jnp.broadcast_to(ws[:, None], (4, layers, W_DIM)).at[2:, 2].add(1.0)
  out = latent.make_projector(generator, settings)(g_vars, None, images,
                                                   latent.target_keys(0, range(4)), start)
  np.testing.assert_allclose(out["ws"], start, atol=1e-6)
  expected = np.mean((np.asarray(synthesize(generator, g_vars, start)) - np.asarray(images)) ** 2,
                     axis=(1, 2, 3))
  np.testing.assert_allclose(out["start_mse"], expected, rtol=1e-4, atol=1e-12)
  np.testing.assert_allclose(out["pixel_mse"][:2], 0.0, atol=1e-10)
  assert np.all(out["start_mse"][2:] > 1e-4), out["start_mse"]
