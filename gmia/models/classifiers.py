"""Networks that can be split at a named layer: a small ResNet classifier.

A split network (gmia.models.split): a class attribute `layers` names the split points in
forward order, and `__call__(x, train, capture, start)` runs the whole network, its device half
or its server half. gmia.inversion works on any module that follows the protocol.

ResNetClassifier is the CIFAR-style ResNet of He et al. (2016) for small images:

  stem:   conv3x3 s1 -> BN -> ReLU
  stages: 3 stages of basic blocks (widths 16/32/64 by default); the first block of a stage
          has the stage's stride. Block: conv3x3 (stride s) -> BN -> ReLU -> conv3x3 -> BN, plus
          a shortcut (conv1x1 stride s + BN when stride or width change), ReLU after the sum.
  logits: global average pool -> Dense(num_classes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmia.models.iresnet import BatchNorm, conv3x3, conv_init
from gmia.models.split import check_split

LAYERS = ("stem", "stage1", "stage2", "stage3", "logits")


class BasicBlock(nn.Module):
  """Post-activation residual block of the CIFAR ResNets."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    y = conv3x3(self.features, self.stride, "conv1", self.dtype)(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv3x3(self.features, 1, "conv2", self.dtype)(y)
    y = norm(name="bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.stride, padding="VALID", use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name="shortcut_conv")(x)
      x = norm(name="shortcut_bn")(x)
    return nn.relu(y + x)


class ResNetClassifier(nn.Module):
  """Small ResNet image classifier with three stages.

  Attributes:
    num_classes: logits per image.
    widths: channels of the three stages (the stem has the first stage's).
    blocks: basic blocks per stage.
    strides: stride of each stage's first block; image sides must be divisible by their product.
    dtype: computation dtype (parameters stay float32).
  """
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  blocks: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 2, 2)
  dtype: Any = jnp.float32
  layers: ClassVar[tuple[str, ...]] = LAYERS

  @property
  def downsampling(self) -> int:
    """How many input pixels one position of the last stage spans, per side."""
    return math.prod(self.strides)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, capture: Sequence[str] = (),
               start: str | None = None) -> jax.Array | dict[str, jax.Array]:
    """Runs the network, or the part of it between two layers.

    Args:
      images: f32[B, H, W, 3] in [-1, 1], H and W divisible by `downsampling`; or, with
        `start`, the activations at layer `start`.
      train: batch statistics (updates `batch_stats` when mutable).
      capture: names from LAYERS. Empty: returns the logits f32[B, num_classes]. Otherwise
        returns {name: activation} and stops after the deepest requested layer (the device half
        of a split).
      start: a name from LAYERS: run only the layers after it (the server half of a split, or
        one block on its own with `capture` set to the next layer).
    Returns:
      f32[B, num_classes], or the dict of captured activations (NHWC).
    """
    if not len(self.widths) == len(self.blocks) == len(self.strides) == 3:
      raise ValueError(f"widths {tuple(self.widths)}, blocks {tuple(self.blocks)} and strides "
                       f"{tuple(self.strides)} must each name the 3 stages")
    begin, last = check_split(LAYERS, capture, start)
    if start is None:
      self.check_images(images)
    captured = {}

    def keep(name: str, value: jax.Array) -> bool:
      """Records `value` if requested; True when nothing deeper is needed."""
      if name in capture:
        captured[name] = value
      return LAYERS.index(name) >= last

    x = images.astype(self.dtype)
    if begin < 0:
      x = conv3x3(self.widths[0], 1, "stem_conv", self.dtype)(x)
      x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="stem_bn")(x))
      if keep("stem", x):
        return captured
    for stage, (width, num_blocks, stride) in enumerate(zip(self.widths, self.blocks,
                                                            self.strides)):
      if stage + 1 <= begin:
        continue
      for block in range(num_blocks):
        x = BasicBlock(width, stride if block == 0 else 1, dtype=self.dtype,
                       name=f"stage{stage + 1}_block{block + 1}")(x, train)
      if keep(f"stage{stage + 1}", x):
        return captured
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)
    if capture:
      keep("logits", x)
      return captured
    return x

  def check_images(self, images: jax.Array) -> None:
    """Raises a ValueError unless `images` is [B, H, W, 3] with H and W divisible by the
    network's downsampling."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    if images.shape[1] % self.downsampling or images.shape[2] % self.downsampling:
      raise ValueError(f"image size {images.shape[1:3]} must be divisible by "
                       f"{self.downsampling} (the product of the stage strides)")


def from_config(model_config: Any, num_classes: int) -> ResNetClassifier:
  """The classifier a `model` config block describes, with `num_classes` logits."""
  return ResNetClassifier(num_classes=num_classes, widths=tuple(model_config.widths),
                          blocks=tuple(model_config.blocks), strides=tuple(model_config.strides),
                          dtype=jnp.dtype(model_config.dtype))
