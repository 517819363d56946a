"""Latent projection: schedules and noise penalty against numpy, recovery of a known latent,
batch independence, 1 device = 8 devices, and the L-BFGS option."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.inversion import latent
from gmia.models import iresnet
from tests.multidevice import run_with_devices

RESOLUTION = 16
BUILD_G = textwrap.dedent(f"""
    import jax, jax.numpy as jnp
    from gmia.models import stylegan
    generator = stylegan.Generator(z_dim=8, w_dim=8, img_resolution={RESOLUTION}, mapping_layers=2,
                                   channel_base=256, channel_max=16)
    g_vars = jax.jit(lambda: generator.init(
        {{"params": jax.random.key(0), "noise": jax.random.key(1)}}, jnp.zeros((1, 8)))).lower(
        ).compile({{"xla_backend_optimization_level": 0}})()
    # Noise strengths > 0, so that the optimised noise maps show in the images.
    g_vars = dict(g_vars, params=jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.2 if "noise_strength" in jax.tree_util.keystr(path) else p,
        g_vars["params"]))
    ws_true = generator.apply(g_vars, jax.random.normal(jax.random.key(5), (8, 8)),
                              method=generator.map)
    targets = generator.apply(g_vars, ws_true, "none", method=generator.synthesize)
""")
# NVIDIA's noise penalty weight (1e5) on 4x4 maps makes a short run chaotic: a rounding
# difference of 1e-7 between layouts grew to 1e-3 in w within 30 steps. A milder weight keeps
# the comparisons below meaningful at tight tolerances.
W_PLUS = latent.ProjectionSettings(num_steps=30, w_plus=True, noise_mode="const",
                                   w_avg_samples=256, regularize_noise_weight=100.0)


@pytest.fixture(scope="module")
def tiny():
  scope = {}
  exec(BUILD_G, scope)
  return scope["generator"], scope["g_vars"], scope["ws_true"], scope["targets"]


def test_schedules_follow_nvidia_formulas():
  num_steps, w_std = 50, 1.7
  for step in range(num_steps):
    t = step / num_steps
    ramp = min(1.0, (1.0 - t) / 0.25)
    ramp = (0.5 - 0.5 * np.cos(ramp * np.pi)) * min(1.0, t / 0.05)
    np.testing.assert_allclose(latent.learning_rate_ramp(step, num_steps, 0.05, 0.25), ramp,
                               atol=1e-6)
    np.testing.assert_allclose(latent.w_noise_scale(step, num_steps, w_std, 0.05, 0.75),
                               w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2, rtol=1e-5, atol=1e-9)


def test_noise_regularization_matches_loops():
  rng = np.random.default_rng(0)
  maps = [rng.normal(size=(r, r)).astype(np.float32) for r in (4, 16, 32)]
  expected = 0.0
  for noise in maps:
    noise = noise.astype(np.float64)
    while True:
      r = noise.shape[0]
      right = np.mean([noise[i, j] * noise[i, j - 1] for i in range(r) for j in range(r)])
      down = np.mean([noise[i, j] * noise[i - 1, j] for i in range(r) for j in range(r)])
      expected += right ** 2 + down ** 2
      if r <= 8:
        break
      noise = np.array([[noise[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(r // 2)]
                        for i in range(r // 2)])
  np.testing.assert_allclose(latent.noise_regularization([jnp.asarray(m) for m in maps]), expected,
                             rtol=1e-4)
  normalized = latent.normalize_noise(jnp.asarray(maps[1]) * 3 + 1)
  np.testing.assert_allclose([normalized.mean(), (normalized ** 2).mean()], [0, 1], atol=1e-5)


def test_projection_recovers_a_known_latent(tiny):
  """W space, no noise: G(w*) is reached almost exactly from w_avg (measured on CPU: pixel MSE
  about 3e-8 after 200 steps, from 0.2-0.6 at w_avg)."""
  generator, g_vars, ws_true, targets = tiny
  settings = latent.ProjectionSettings(num_steps=200, noise_mode="none", w_avg_samples=1000)
  out = latent.make_projector(generator, settings)(g_vars, None, targets[:3],
                                                   latent.target_keys(0, range(3)))
  mse = np.asarray(out["pixel_mse"])
  np.testing.assert_allclose(mse, np.mean((np.asarray(out["images"]) - targets[:3]) ** 2,
                                          axis=(1, 2, 3)), rtol=1e-4)
  assert np.all(mse < 1e-5), mse
  assert np.all(np.asarray(out["start_mse"]) > 1e4 * mse), (out["start_mse"], mse)
  np.testing.assert_allclose(out["ws"], ws_true[:3], atol=0.02)


def test_batch_equals_one_target_at_a_time(tiny):
  """W+ with optimised noise maps: each target's result depends on it and its key alone."""
  generator, g_vars, _, targets = tiny
  project = latent.make_projector(generator, W_PLUS)
  keys = latent.target_keys(1, range(3))
  batch = project(g_vars, None, targets[:3], keys)
  assert np.all(batch["loss"][:, -1] < 0.1 * batch["loss"][:, 0])
  for i in (0, 2):
    single = project(g_vars, None, targets[i:i + 1], keys[i:i + 1])
    for name in ("ws", "images", "loss"):
      np.testing.assert_allclose(single[name][0], batch[name][i], rtol=1e-4, atol=1e-5)


def test_eight_devices_equal_one(tiny):
  generator, g_vars, _, targets = tiny
  one = latent.make_projector(generator, W_PLUS)(g_vars, None, targets,
                                                 latent.target_keys(1, range(8)))
  eight = run_with_devices(8, BUILD_G + textwrap.dedent("""
      from gmia import parallel
      from gmia.inversion import latent
      mesh = parallel.make_mesh()
      settings = latent.ProjectionSettings(num_steps=30, w_plus=True, noise_mode="const",
                                           w_avg_samples=256, regularize_noise_weight=100.0)
      sharded = jax.device_put(targets, parallel.data_sharding(mesh))
      keys = jax.device_put(latent.target_keys(1, range(8)), parallel.data_sharding(mesh))
      out = latent.make_projector(generator, settings)(g_vars, None, sharded, keys)
      assert len(out["ws"].sharding.device_set) == 8
      RESULT = {"ws": out["ws"], "images": out["images"]}
  """))
  np.testing.assert_allclose(eight["ws"], one["ws"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(eight["images"], one["images"], rtol=1e-4, atol=1e-5)


def test_encoder_losses_alone_pull_towards_the_target(tiny):
  """Perceptual (encoder features) + identity loss, no pixel term: pixel error still falls
  (measured: to 0.34 and 0.04 of its start with a random encoder)."""
  generator, g_vars, _, targets = tiny
  encoder = iresnet.IResNet(blocks=(1, 1, 1, 1), width=4, num_features=16)
  encoder_vars = encoder.init(iresnet.init_key(0), jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))
  settings = latent.ProjectionSettings(num_steps=60, noise_mode="none", w_avg_samples=256,
                                       pixel_weight=0.0, perceptual_weight=1.0,
                                       identity_weight=1.0, initial_learning_rate=0.05)
  out = latent.make_projector(generator, settings, encoder)(
      g_vars, encoder_vars, targets[:2], latent.target_keys(0, range(2)))
  assert np.all(out["pixel_mse"] < 0.5 * out["start_mse"]), (out["pixel_mse"], out["start_mse"])


def test_lbfgs_projection_lowers_the_error_within_its_budget(tiny):
  """L-BFGS with optimised noise maps, 2 targets 1 at a time: each ends below its start's
  pixel error, within num_steps evaluations, its loss never rising, its noise maps normalised."""
  generator, g_vars, _, targets = tiny
  settings = latent.ProjectionSettings(num_steps=40, optimizer="lbfgs", noise_mode="const",
                                       w_avg_samples=256, regularize_noise_weight=100.0,
                                       lbfgs_memory=5, lbfgs_batch=1)
  out = latent.make_projector(generator, settings)(g_vars, None, targets[:2],
                                                   latent.target_keys(0, range(2)))
  assert np.all(out["pixel_mse"] < out["start_mse"]), (out["pixel_mse"], out["start_mse"])
  evaluations = np.asarray(out["evaluations"])
  assert np.all((evaluations > 1) & (evaluations <= settings.num_steps)), evaluations
  assert out["loss"].shape == (2, settings.num_steps)
  assert np.all(np.diff(np.asarray(out["loss"]), axis=1) <= 0)
  for noise in jax.tree.leaves(out["noise"]):
    np.testing.assert_allclose(noise.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.square(noise).mean(axis=(1, 2)), 1.0, rtol=1e-4)


def test_bad_inputs_are_named(tiny):
  generator, g_vars, _, targets = tiny
  with pytest.raises(ValueError, match="noise_mode"):
    latent.ProjectionSettings(noise_mode="random")
  with pytest.raises(ValueError, match="optimizer"):
    latent.ProjectionSettings(optimizer="sgd")
  with pytest.raises(ValueError, match="lbfgs_batch"):
    latent.ProjectionSettings(optimizer="lbfgs", lbfgs_batch=0)
  with pytest.raises(ValueError, match="memory"):
    latent.ProjectionSettings(optimizer="lbfgs", lbfgs_memory=0)
  with pytest.raises(ValueError, match="needs an encoder"):
    latent.make_projector(generator, latent.ProjectionSettings(identity_weight=1.0))
  project = latent.make_projector(generator, W_PLUS)
  with pytest.raises(ValueError, match="resolution"):
    project(g_vars, None, jnp.zeros((2, 8, 8, 3)), latent.target_keys(0, range(2)))
  with pytest.raises(ValueError, match="one key per target"):
    project(g_vars, None, targets[:2], latent.target_keys(0, range(3)))
