"""IResNet, the ArcFace backbone of insightface's arcface_torch, in flax.linen.

The layout follows arcface_torch/backbones/iresnet.py module for module, so pretrained insightface
weights map one to one (tests/iresnet_onnx_import.py checks it):

  stem:   conv3x3 s1 (no bias) -> BN -> PReLU
  stages: 4 stages of IBasicBlocks, widths w, 2w, 4w, 8w (w = 64 in insightface), the first block
          of every stage with stride 2. Block: BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride s)
          -> BN, plus a shortcut (conv1x1 stride s + BN when stride or width change); no
          activation after the sum.
  head:   BN -> flatten in PyTorch's (C, H, W) order -> dropout -> Dense(num_features)
          -> BatchNorm1d without a learnable scale. The output is not normalised.

All BNs use eps 1e-5 and PyTorch's momentum 0.1 (flax momentum 0.9). A 112 px input gives a 7x7
final map; any input size divisible by 16 works, with the dense layer sized to match.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmia.models.split import check_split

# Points at which the network can be read out (and cut, for split-network studies), in order.
LAYERS = ("stem", "stage1", "stage2", "stage3", "stage4", "embedding")

ARCHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}

BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
# arcface_torch draws every conv kernel from N(0, 0.1); BN then fixes the scale.
conv_init = nn.initializers.normal(stddev=0.1)
# PyTorch's nn.Linear default (kaiming uniform with a = sqrt(5)).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class PReLU(nn.Module):
  """Per-channel PReLU (last axis), slopes initialised to 0.25 as in PyTorch."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("negative_slope", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def conv3x3(features: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  # PyTorch padding=1 on both sides; flax "SAME" would pad (0, 1) at stride 2.
  return nn.Conv(features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), use_bias=False,
                 kernel_init=conv_init, dtype=dtype, name=name)


class IBasicBlock(nn.Module):
  """Pre-activation style residual block of IResNet."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    y = norm(name="bn1")(x)
    y = conv3x3(self.features, 1, "conv1", self.dtype)(y)
    y = norm(name="bn2")(y)
    y = PReLU(name="prelu")(y)
    y = conv3x3(self.features, self.stride, "conv2", self.dtype)(y)
    y = norm(name="bn3")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.stride, padding="VALID", use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return y + x


class IResNet(nn.Module):
  """IResNet backbone + embedding head.

  Attributes:
    blocks: blocks per stage, e.g. ARCHS["r50"].
    width: channels of the stem and the first stage (64 in insightface); stages use 1, 2, 4, 8x.
    num_features: embedding size.
    dropout: dropout rate before the dense layer (0 in insightface training).
    dtype: computation dtype; parameters and the embedding are float32, or float64 when the
      computation is (see `output_dtype`).
  """
  blocks: Sequence[int] = ARCHS["r50"]
  width: int = 64
  num_features: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32
  layers: ClassVar[tuple[str, ...]] = LAYERS

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, capture: Sequence[str] = (),
               start: str | None = None) -> jax.Array | dict[str, jax.Array]:
    """Runs the network, or the part of it between two layers.

    Args:
      images: f32[B, H, W, 3] in [-1, 1] (see gmia.models.preprocessing.preprocess), H and W divisible
        by 16; or, with `start`, the activations at layer `start`.
      train: batch statistics (updates `batch_stats` when mutable) and dropout (rng "dropout").
      capture: names from LAYERS. Empty: returns the embedding f32[B, num_features]. Otherwise
        returns {name: activation} and stops after the deepest requested layer, so
        `capture=("stage2",)` is the device half of a network split after stage 2.
      start: a name from LAYERS: run only the layers after it (the server half of a split, or
        one block on its own with `capture` set to the next layer).
    Returns:
      f32[B, num_features] (not normalised), or the dict of captured activations (NHWC).
    """
    begin, last = check_split(LAYERS, capture, start)
    if start is None:
      check_images(images)
    captured = {}

    def keep(name: str, value: jax.Array) -> bool:
      """Records `value` if requested; True when nothing deeper is needed."""
      if name in capture:
        captured[name] = value
      return LAYERS.index(name) >= last

    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    x = images.astype(self.dtype)
    if begin < 0:
      x = conv3x3(self.width, 1, "stem_conv", self.dtype)(x)
      x = norm(name="stem_bn")(x)
      x = PReLU(name="stem_prelu")(x)
      if keep("stem", x):
        return captured
    for stage, num_blocks in enumerate(self.blocks):
      if stage + 1 <= begin:
        continue
      for block in range(num_blocks):
        x = IBasicBlock(self.width * 2**stage, 2 if block == 0 else 1, dtype=self.dtype,
                        name=f"stage{stage + 1}_block{block + 1}")(x, train)
      if keep(f"stage{stage + 1}", x):
        return captured
    x = norm(name="head_bn")(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch flattens (C, H, W).
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_features, kernel_init=dense_init, dtype=self.dtype, name="fc")(x)
    # BatchNorm1d whose weight insightface fixes to 1 (requires_grad=False).
    x = norm(use_scale=False, name="features")(x).astype(output_dtype(self.dtype))
    if capture:
      keep("embedding", x)
      return captured
    return x


def output_dtype(dtype: Any) -> jnp.dtype:
  """The dtype of parameters and embeddings for computation dtype `dtype`: float32, or float64
  when computing in float64 (then the whole network runs in float64, for exact comparisons)."""
  return jnp.promote_types(dtype, jnp.float32)


def check_images(images: jax.Array) -> None:
  """Raises a ValueError unless `images` is [B, H, W, 3] with H and W divisible by 16."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
  if images.shape[1] % 16 or images.shape[2] % 16:
    raise ValueError(f"image size {images.shape[1:3]} must be divisible by 16 "
                     "(four stride-2 stages)")


def input_size(model: IResNet, variables: dict[str, Any]) -> int:
  """The square input size the dense layer was built for: its rows are C * (size / 16)^2, C the
  last stage's channels."""
  if "fc" not in variables.get("params", {}):
    raise ValueError("variables must hold the model's params (with fc)")
  rows = np.shape(variables["params"]["fc"]["kernel"])[0]
  channels = model.width * 2 ** (len(model.blocks) - 1)
  side = int(round(np.sqrt(rows / channels)))
  if side < 1 or channels * side * side != rows:
    raise ValueError(f"fc/kernel has {rows} rows, not {channels} channels times a square map: "
                     "the variables are not of this model")
  return 16 * side


def init_key(seed: int) -> jax.Array:
  """A key for `IResNet.init`. XLA:CPU compiles one threefry draw per parameter slowly (init
  takes about 4x longer to compile); the "rbg" generator compiles fast."""
  return jax.random.key(seed, impl="rbg")


def iresnet(arch: str, **kwargs: Any) -> IResNet:
  """IResNet by insightface name ("r18", "r34", "r50", "r100")."""
  if arch not in ARCHS:
    raise ValueError(f"unknown IResNet arch {arch!r}; choose from {sorted(ARCHS)}")
  return IResNet(blocks=ARCHS[arch], **kwargs)


def from_config(model_config: Any) -> IResNet:
  """The IResNet a `model` config block describes (blocks, width, num_features, dropout, dtype)."""
  return IResNet(blocks=tuple(model_config.blocks), width=model_config.width,
                 num_features=model_config.num_features, dropout=model_config.dropout,
                 dtype=jnp.dtype(model_config.dtype))
