"""What face networks read and give: their input presets, gmia's image scaling and unit
embeddings.

A network reads face crops at its input size S; how it wants their pixels is a `Preprocessing`,
from a table of presets of released matchers or explicit fields:

  preset          input  channels  pixels            layout  embedding
  arcface         112    RGB       (x - 127.5)/127.5  NCHW    512 (insightface w600k_r50, ...)
  sface           112    RGB       x (0..255)         NCHW    128 (OpenCV Zoo SFace)
  mobilefacenet   112    RGB       (x - 127)/128      NCHW    512 (fr_feature.onnx and alike)

gmia's own networks read RGB in [-1, 1], NHWC (`preprocess`), insightface's scaling.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a network wants its crops: side, channel order, (x - mean) / std, memory layout."""
  input_size: int
  bgr: bool = False
  mean: float = 127.5
  std: float = 127.5
  nchw: bool = True


PRESETS = {
    "arcface": Preprocessing(112),
    "sface": Preprocessing(112, mean=0.0, std=1.0),
    "mobilefacenet": Preprocessing(112, mean=127.0, std=128.0),
}


def preprocess(images: jax.Array, size: int) -> jax.Array:
  """uint8[B, H, W, 3] (RGB) or float[B, H, W, 3] in [-1, 1] -> f32[B, size, size, 3] in [-1, 1].

  Resizing is bilinear with antialiasing, so large photos shrink without aliasing.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3] RGB, got shape {images.shape}")
  if images.dtype == jnp.uint8:
    images = (images.astype(jnp.float32) - 127.5) / 127.5
  images = images.astype(jnp.float32)
  if images.shape[1:3] != (size, size):
    images = jax.image.resize(images, (images.shape[0], size, size, 3), "linear", antialias=True)
  return images


def normalize(x: jax.Array) -> jax.Array:
  """Rows of x scaled to unit L2 norm (a zero row stays zero)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))
