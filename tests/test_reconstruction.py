"""GAN-Leaks reconstruction scores against numpy brute force; the report figure."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gmia.jobs import reconstruction


def test_nearest_sample_distance_matches_brute_force():
  rng = np.random.default_rng(0)
  queries = rng.uniform(-1, 1, (5, 4, 4, 3)).astype(np.float32)
  samples = rng.uniform(-1, 1, (37, 4, 4, 3)).astype(np.float32)
  samples[11] = queries[2] + 0.01  # one near copy
  expected = [min(np.linalg.norm((q - s).astype(np.float64)) for s in samples) for q in queries]
  found = reconstruction.nearest_sample_distance(jnp.asarray(queries), jnp.asarray(samples),
                                                 chunk_size=2)
  np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-3)
  assert np.argmin(found) == 2


def test_scores_and_calibration():
  distances = np.array([1.0, 3.0, 2.0])
  np.testing.assert_array_equal(reconstruction.membership_scores(distances), -distances)
  np.testing.assert_array_equal(
      reconstruction.membership_scores(distances, np.array([2.0, 2.0, 2.0])), [1.0, -1.0, 0.0])
  with pytest.raises(ValueError, match="differ in shape"):
    reconstruction.membership_scores(distances, np.zeros(2))
  mse = np.array([0.25, 0.0])
  np.testing.assert_allclose(reconstruction.projection_residual(mse, (4, 4, 3)),
                             np.sqrt(mse * 48), rtol=1e-6)


def test_residual_grid_is_written(tmp_path):
  rng = np.random.default_rng(1)
  targets = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  recon = targets.copy()
  recon[1] = -targets[1]
  residual = reconstruction.residual_images(targets, recon)
  np.testing.assert_array_equal(residual[0], -1.0)
  np.testing.assert_allclose(residual[1], 2 * np.abs(targets[1]) - 1, atol=1e-6)
  path = tmp_path / "grid.png"
  reconstruction.save_reconstruction_grid(str(path), targets, recon, ["a", "b"])
  width, height = Image.open(path).size
  assert width >= 3 * 8 * 12 and height >= 2 * 8 * 12
