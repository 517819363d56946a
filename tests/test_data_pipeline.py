"""Input pipeline: shapes, range, determinism per step, epochs, and per-host slices."""

import numpy as np
import pytest

from gmia.data.pipeline import Batches


def _images(n=10):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)


def test_batches_are_scaled_images_in_range():
  images = _images()
  batches = Batches(images, global_batch_size=4, seed=0)
  batch = batches.at(3)["images"]
  assert batch.shape == (4, 4, 4, 3) and batch.dtype == np.float32
  assert batch.min() >= -1 and batch.max() <= 1
  expected = images[batches.global_indices(3)].astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(batch, expected)
  np.testing.assert_array_equal(Batches(images, global_batch_size=4, seed=0).at(3)["images"],
                                batch)
  assert not np.array_equal(Batches(images, global_batch_size=4, seed=1).at(3)["images"], batch)


def test_every_photo_once_per_epoch_even_across_batch_boundaries():
  batches = Batches(_images(10), global_batch_size=4, seed=2)
  stream = np.concatenate([batches.global_indices(s) for s in range(5)])  # Exactly 2 epochs.
  np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(stream[10:]), np.arange(10))
  assert not np.array_equal(stream[:10], stream[10:])


def test_batch_larger_than_the_data_set():
  batch = Batches(_images(3), global_batch_size=8, seed=0).global_indices(0)
  assert np.bincount(batch, minlength=3).min() >= 2


def test_process_slices_tile_the_global_batch():
  images, labels = _images(12), np.arange(12) * 10
  whole = Batches(images, global_batch_size=8, seed=5, process_index=0, process_count=1,
                  labels=labels).at(7)
  parts = [Batches(images, global_batch_size=8, seed=5, process_index=p, process_count=4,
                   mirror=False, labels=labels).at(7) for p in range(4)]
  assert all(p["images"].shape == (2, 4, 4, 3) for p in parts)
  for name in ("images", "labels"):
    np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])
  # Each label stays with its image.
  np.testing.assert_array_equal(
      whole["images"], images[whole["labels"] // 10].astype(np.float32) / 127.5 - 1)


def test_mirror_flips_some_images_deterministically():
  images = _images(16)
  plain = Batches(images, global_batch_size=16, seed=0).at(0)["images"]
  mirrored = Batches(images, global_batch_size=16, seed=0, mirror=True).at(0)["images"]
  flipped = [not np.array_equal(a, b) for a, b in zip(plain, mirrored)]
  assert 0 < sum(flipped) < 16
  for a, b, f in zip(plain, mirrored, flipped):
    np.testing.assert_array_equal(b, a[:, ::-1] if f else a)


@pytest.mark.parametrize("kwargs, message", [
    ({"images": np.zeros((0, 4, 4, 3), np.uint8)}, "empty"),
    ({"images": np.zeros((4, 4, 4, 3), np.float32)}, "uint8"),
    ({"global_batch_size": 6, "process_count": 4, "process_index": 0}, "divisible"),
    ({"labels": np.zeros(3)}, "3 labels for 10 images"),
])
def test_bad_input(kwargs, message):
  args = {"images": _images(), "global_batch_size": 4, "seed": 0, **kwargs}
  with pytest.raises(ValueError, match=message):
    Batches(args.pop("images"), **args)
