"""Face images -> unit identity embeddings with an IResNet (trained here or imported).

Preprocessing is insightface's: RGB, (x - 127.5) / 127.5, resized to the network's input size
(112 px for the released models; the size is read off the dense layer, so small models trained
on 32 or 64 px data resize to theirs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gmia.models.iresnet import IResNet, input_size


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


def embed(model: IResNet, variables: dict[str, Any], images: jax.Array) -> jax.Array:
  """Unit-norm identity embeddings f32[B, num_features] of uint8 or [-1, 1] images [B, H, W, 3].

  Inference mode (running BN statistics). `model` is static: use
  `jax.jit(embed, static_argnums=0)` or `functools.partial(embed, model)`.
  """
  x = preprocess(images, input_size(model, variables))
  features = model.apply(variables, x, train=False)
  return features * jax.lax.rsqrt(jnp.maximum(jnp.sum(features**2, -1, keepdims=True), 1e-24))
