"""StyleGAN2 networks: shapes and names at 32-256 px, mapping/truncation, noise, mixing, D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gmia.models import stylegan

TINY = dict(channel_base=256, channel_max=16)


def fast_init(module, rngs, *args):
  """Initialises under jit without backend optimisation: compiles the many random draws fast."""
  return jax.jit(lambda: module.init(rngs, *args)).lower().compile(
      {"xla_backend_optimization_level": 0})()


@pytest.fixture(scope="module")
def tiny_g():
  g = stylegan.Generator(z_dim=8, w_dim=8, img_resolution=32, mapping_layers=2, **TINY)
  g_vars = fast_init(g, {"params": jax.random.key(0), "noise": jax.random.key(1)},
                     jnp.zeros((2, 8)))
  # Non-zero noise strengths, so that the noise inputs show in the images.
  g_vars = dict(g_vars, params=jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.5 if "noise_strength" in jax.tree_util.keystr(path) else p,
      g_vars["params"]))
  return g, g_vars


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_shapes_names_and_channels_follow_nvidia(resolution):
  """Abstract init at the NVIDIA `auto` widths (channel_base 16384): no compile needed."""
  g = stylegan.Generator(z_dim=512, w_dim=512, img_resolution=resolution, mapping_layers=2,
                         channel_base=16384)
  d = stylegan.Discriminator(img_resolution=resolution, channel_base=16384)
  z = jax.ShapeDtypeStruct((4, 512), jnp.float32)
  g_vars = jax.eval_shape(lambda: g.init({"params": jax.random.key(0),
                                          "noise": jax.random.key(1)}, jnp.zeros(z.shape)))
  images = jax.eval_shape(lambda v: g.apply(v, jnp.zeros(z.shape), rngs={
      "noise": jax.random.key(2)}), g_vars)
  assert images.shape == (4, resolution, resolution, 3)
  flat = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(g_vars["params"]).items()}
  log2 = int(np.log2(resolution))
  assert stylegan.num_ws(resolution) == 2 * log2 - 2
  channels = {r: min(16384 // r, 512) for r in (2 ** i for i in range(2, log2 + 1))}
  assert flat["synthesis/b4/const"] == (4, 4, channels[4])
  assert flat[f"synthesis/b{resolution}/conv0/weight"] == (
      3, 3, channels[resolution // 2], channels[resolution])
  assert flat[f"synthesis/b{resolution}/torgb/weight"] == (1, 1, channels[resolution], 3)
  assert flat["synthesis/b8/conv0/affine/weight"] == (512, channels[4])
  assert flat["mapping/fc1/weight"] == (512, 512)
  assert "mapping/fc2/weight" not in flat
  d_vars = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros(images.shape)))
  d_flat = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(d_vars["params"]).items()}
  assert d_flat[f"b{resolution}/fromrgb/weight"] == (1, 1, 3, channels[resolution])
  assert d_flat[f"b{resolution}/skip/weight"] == (
      1, 1, channels[resolution], channels[resolution // 2])
  assert d_flat["b4/conv/weight"] == (3, 3, channels[4] + 1, channels[4])
  assert d_flat["b4/fc/weight"] == (channels[4] * 16, channels[4])
  logits = jax.eval_shape(lambda v: d.apply(v, jnp.zeros(images.shape)), d_vars)
  assert logits.shape == (4,)


@pytest.mark.parametrize("resolution", [48, 2, 100, 32.0])
def test_resolution_must_be_a_power_of_two(resolution):
  with pytest.raises(ValueError, match="power of two"):
    stylegan.check_resolution(resolution)
  with pytest.raises(ValueError, match="power of two"):
    stylegan.Discriminator(img_resolution=resolution).init(jax.random.key(0),
                                                           jnp.zeros((1, 8, 8, 3)))


def test_mapping_normalises_z_tracks_w_avg_and_truncates(tiny_g):
  g, g_vars = tiny_g
  z = jax.random.normal(jax.random.key(3), (4, 8))
  ws = g.apply(g_vars, z, method="map")
  assert ws.shape == (4, stylegan.num_ws(32), 8)
  np.testing.assert_allclose(g.apply(g_vars, 7.0 * z, method="map"), ws, rtol=1e-4, atol=1e-5)

  _, updated = g.apply(g_vars, z, update_w_avg=True, method="map", mutable=["buffers"])
  w_avg = np.asarray(updated["buffers"]["mapping"]["w_avg"])
  old = np.asarray(g_vars["buffers"]["mapping"]["w_avg"])
  np.testing.assert_allclose(w_avg, ws[:, 0].mean(0) + 0.995 * (old - ws[:, 0].mean(0)),
                             rtol=1e-5, atol=1e-7)

  g_vars = dict(g_vars, buffers=updated["buffers"])
  for psi, cutoff in [(0.0, None), (0.7, None), (0.5, 3)]:
    got = np.asarray(g.apply(g_vars, z, psi, cutoff, method="map"))
    want = np.asarray(ws).copy()
    rows = slice(None) if cutoff is None else slice(0, cutoff)
    want[:, rows] = w_avg + psi * (want[:, rows] - w_avg)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_noise_modes(tiny_g):
  g, g_vars = tiny_g
  z = jax.random.normal(jax.random.key(4), (2, 8))
  run = jax.jit(lambda v, z, key, mode: g.apply(v, z, noise_mode=mode, rngs={"noise": key}),
                static_argnums=3)
  k1, k2 = jax.random.key(5), jax.random.key(6)
  random1, random1_again = run(g_vars, z, k1, "random"), run(g_vars, z, k1, "random")
  np.testing.assert_array_equal(random1, random1_again)
  assert np.abs(random1 - run(g_vars, z, k2, "random")).mean() > 1e-3
  const1, const2 = run(g_vars, z, k1, "const"), run(g_vars, z, k2, "const")
  np.testing.assert_array_equal(const1, const2)
  none = run(g_vars, z, k1, "none")
  assert np.abs(const1 - none).mean() > 1e-3
  zero_strength = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 0 if "noise_strength" in jax.tree_util.keystr(path) else p,
      g_vars["params"])
  np.testing.assert_allclose(run(dict(g_vars, params=zero_strength), z, k1, "random"), none,
                             atol=1e-6)
  with pytest.raises(ValueError, match="noise_mode"):
    g.apply(g_vars, z, noise_mode="fixed")


def test_fused_and_batched_modulation_give_the_same_generator(tiny_g):
  batched, g_vars = tiny_g
  assert not batched.fused_modconv
  fused = batched.clone(fused_modconv=True)
  z = jax.random.normal(jax.random.key(7), (3, 8))
  run = jax.jit(lambda v, z: (fused.apply(v, z, noise_mode="const"),
                              batched.apply(v, z, noise_mode="const")))
  fused_images, batched_images = run(g_vars, z)
  np.testing.assert_allclose(fused_images, batched_images, atol=1e-5)


def test_style_mixing_switches_rows_at_one_cutoff():
  ws = jnp.zeros((3, 8, 4))
  ws_mix = jnp.ones((3, 8, 4))
  np.testing.assert_array_equal(stylegan.style_mix(jax.random.key(0), ws, ws_mix, 0.0), ws)
  cutoffs = set()
  for seed in range(20):
    mixed = np.asarray(stylegan.style_mix(jax.random.key(seed), ws, ws_mix, 1.0))
    cutoff = int((mixed[0, :, 0] == 0).sum())
    assert 1 <= cutoff <= 7
    np.testing.assert_array_equal(mixed[:, :cutoff], 0)
    np.testing.assert_array_equal(mixed[:, cutoff:], 1)
    cutoffs.add(cutoff)
  assert len(cutoffs) > 3


def test_discriminator_minibatch_std_couples_the_batch():
  images = jax.random.normal(jax.random.key(8), (4, 32, 32, 3))
  changed = images.at[0].multiply(3.0)
  for mbstd_channels, coupled in [(1, True), (0, False)]:
    d = stylegan.Discriminator(img_resolution=32, mbstd_group_size=4,
                               mbstd_num_channels=mbstd_channels, **TINY)
    d_vars = fast_init(d, jax.random.key(9), images)
    before, after = jax.jit(lambda v: (d.apply(v, images), d.apply(v, changed)))(d_vars)
    others_moved = np.abs(np.asarray(before - after)[1:]).max()
    assert (others_moved > 1e-4) == coupled
  with pytest.raises(ValueError, match="expects images"):
    d.apply(d_vars, images[:, :16, :16])
