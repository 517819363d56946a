"""Image grids and figure files, written atomically (temporary file, then rename)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from gmia.files import write_atomic


def to_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 images pass through; float images in [-1, 1] map to [0, 255]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if not np.all(np.isfinite(images)):
    raise ValueError("images contain NaN or infinite values")
  return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncols: int, labels: Sequence[str] | None = None,
         pad: int = 2, upscale: int = 1) -> np.ndarray:
  """Tiles images: u8[N,H,W,3] (or f32 in [-1,1]) -> u8[rows*(H+pad+label), ncols*(W+pad), 3].

  With `labels`, each tile gets a caption strip under it; `upscale` enlarges small faces
  (nearest neighbour, so pixels stay honest).
  """
  images = to_uint8(images)
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected images of shape [N, H, W, 3], got {images.shape}")
  if len(images) == 0:
    raise ValueError("no images to tile")
  if labels is not None and len(labels) != len(images):
    raise ValueError(f"{len(labels)} labels for {len(images)} images")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, _ = images.shape
  label_h = 12 if labels is not None else 0
  rows = -(-n // ncols)
  canvas = np.full((rows * (h + pad + label_h) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, ncols)
    y, x = pad + r * (h + pad + label_h), pad + c * (w + pad)
    canvas[y:y + h, x:x + w] = images[i]
  if labels is None:
    return canvas
  picture = Image.fromarray(canvas)
  draw = ImageDraw.Draw(picture)
  for i, text in enumerate(labels):
    r, c = divmod(i, ncols)
    draw.text((pad + c * (w + pad), pad + r * (h + pad + label_h) + h), text, fill=(0, 0, 0))
  return np.asarray(picture)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a u8[H,W,3] image as PNG without ever leaving a partial file at `path`."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  write_atomic(path, buffer.getvalue())


def save_grid(path: str, images: np.ndarray, ncols: int,
              labels: Sequence[str] | None = None, upscale: int = 1) -> None:
  """Tiles `images` (see `grid`) and writes the PNG atomically."""
  save_png(path, grid(images, ncols, labels, upscale=upscale))
