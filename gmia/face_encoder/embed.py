"""Face images -> unit identity embeddings with an IResNet (trained here or imported).

Preprocessing is insightface's: RGB, (x - 127.5) / 127.5, resized to the network's input size
(112 px for the released models; the size is read off the dense layer, so small models trained
on 32 or 64 px data resize to theirs).
"""

from __future__ import annotations

from typing import Any

import jax

from gmia.models.iresnet import IResNet, input_size
from gmia.models.preprocessing import normalize, preprocess


def embed(model: IResNet, variables: dict[str, Any], images: jax.Array) -> jax.Array:
  """Unit-norm identity embeddings f32[B, num_features] of uint8 or [-1, 1] images [B, H, W, 3].

  Inference mode (running BN statistics). `model` is static: use
  `jax.jit(embed, static_argnums=0)` or `functools.partial(embed, model)`.
  """
  x = preprocess(images, input_size(model, variables))
  return normalize(model.apply(variables, x, train=False))
