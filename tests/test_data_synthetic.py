"""The embedded synthetic face set: deterministic bytes, stable identities, tfds round trip."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gmia.data
from gmia.data import synthetic


def _sorted(arrays):
  order = np.argsort(arrays.photo_id)
  return arrays.images[order], arrays.identity[order], arrays.photo_id[order]


def test_same_config_same_bytes_through_tfds(tmp_path):
  first = gmia.data.load("synthetic_faces", data_dir=str(tmp_path / "a"), resolution=32,
                         identities=6, photos=4, seed=3)
  second = gmia.data.load("synthetic_faces", data_dir=str(tmp_path / "b"), resolution=32,
                          identities=6, photos=4, seed=3)
  for x, y in zip(_sorted(first), _sorted(second)):
    np.testing.assert_array_equal(x, y)
  images, identity, photo_id = _sorted(first)
  assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(identity, np.repeat(np.arange(6), 4))
  np.testing.assert_array_equal(photo_id, np.arange(24))
  # The tfds copy holds exactly what the renderer produces.
  rendered, _, _ = synthetic.render_identities(np.arange(6), 4, 32, 3)
  np.testing.assert_array_equal(images, rendered)


def test_identity_depends_only_on_seed_and_index():
  all_six, _, _ = synthetic.render_identities(np.arange(6), 3, 32, seed=0)
  just_four, _, _ = synthetic.render_identities(np.array([4]), 3, 32, seed=0)
  np.testing.assert_array_equal(all_six[12:15], just_four)
  other_seed, _, _ = synthetic.render_identities(np.array([4]), 3, 32, seed=1)
  assert np.abs(other_seed.astype(int) - just_four.astype(int)).mean() > 5


def test_photos_of_one_identity_vary():
  images, _, _ = synthetic.render_identities(np.array([0]), 4, 32, seed=0)
  pairwise = np.abs(images[:, None].astype(int) - images[None].astype(int)).mean(axis=(2, 3, 4))
  assert pairwise[~np.eye(4, dtype=bool)].min() > 5  # Nuisance changes every photo.


@pytest.mark.parametrize("kwargs, message", [
    ({"resolution": 48}, "resolution must be one of"),
    ({"identities": 0}, "at least one identity"),
])
def test_bad_configs_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.synthetic_config(**kwargs)


def test_unknown_dataset_lists_the_known_ones(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'celeba_hq'.*synthetic_faces"):
    gmia.data.load("celeba_hq", data_dir=str(tmp_path))


PREPARE = """
import sys, numpy as np, gmia.data
arrays = gmia.data.load("synthetic_faces", data_dir=sys.argv[1], resolution=32, identities=6,
                        photos=3, seed=0)
np.save(sys.argv[2], arrays.images)
"""


def test_jobs_preparing_one_data_set_at_once_take_turns(tmp_path):
  """Four processes start preparing the same data set in one folder together: each one reads it
  (without the lock, tfds's renames of their finished folders collide)."""
  processes = [subprocess.Popen([sys.executable, "-c", PREPARE, str(tmp_path / "data"),
                                 str(tmp_path / f"images_{i}.npy")], stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
               for i in range(4)]
  for process in processes:
    _, error = process.communicate(timeout=300)
    assert process.returncode == 0, error.strip().splitlines()[-1:]
  first = np.load(tmp_path / "images_0.npy")
  for i in range(1, 4):
    np.testing.assert_array_equal(np.load(tmp_path / f"images_{i}.npy"), first)
