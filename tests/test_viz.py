"""Image grids place every tile where it belongs."""

import numpy as np
import pytest
from PIL import Image

from gmia import viz


def test_grid_layout_and_float_conversion(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 3), dtype=np.uint8)
  canvas = viz.grid(images, ncols=2, pad=1, upscale=2)
  assert canvas.shape == (3 * 7 + 1, 2 * 9 + 1, 3)
  tile = canvas[1 + 2 * 7:1 + 2 * 7 + 6, 1:9]  # Fifth image: row 2, column 0.
  np.testing.assert_array_equal(tile, images[4].repeat(2, 0).repeat(2, 1))
  floats = images.astype(np.float32) / 127.5 - 1
  np.testing.assert_array_equal(viz.grid(floats, ncols=2), viz.grid(images, ncols=2))
  viz.save_grid(str(tmp_path / "g.png"), images, ncols=2, labels=list("abcde"))
  assert Image.open(tmp_path / "g.png").size[0] == 2 * 6 + 2


def test_bad_images_are_named():
  with pytest.raises(ValueError, match="NaN"):
    viz.grid(np.full((1, 2, 2, 3), np.nan), ncols=1)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    viz.grid(np.zeros((2, 2, 3), np.uint8), ncols=1)
  with pytest.raises(ValueError, match="2 labels for 1 images"):
    viz.grid(np.zeros((1, 2, 2, 3), np.uint8), ncols=1, labels=["a", "b"])
