"""The denoising U-Net of DDPM in flax.linen, NHWC, laid out as diffusers' `UNet2DModel`.

A port of the mathematics of diffusers' `UNet2DModel` (models/unets/unet_2d.py and the blocks it
uses): a sinusoidal timestep embedding (`flip_sin_to_cos`, `freq_shift`) and its two-layer MLP;
`conv_in`; down blocks (`DownBlock2D`, `AttnDownBlock2D`: `layers_per_block` resnet blocks, each
followed by self-attention in the Attn kind, then a stride-2 convolution except in the last
block); the mid block (resnet, attention, resnet); up blocks (`UpBlock2D`, `AttnUpBlock2D`:
`layers_per_block + 1` resnet blocks on the features concatenated with the down path's, then
nearest-neighbour upsampling and a convolution except in the last block); group norm, SiLU and
`conv_out`. Resnet blocks add the projected time embedding after their first convolution
("default") or scale and shift their second group norm by it ("scale_shift").

Submodules carry diffusers' names with list indices joined by "_": diffusers'
`down_blocks.1.attentions.0.to_q.weight` is params/down_blocks_1/attentions_0/to_q/kernel, so a
released checkpoint maps onto it 1:1 (gmia.models.import_diffusers). Layouts differ: conv
kernels [kh, kw, in, out], dense kernels [in, out]; group norms hold scale and bias.

The network predicts what it was trained to (epsilon in gmia's DDPM, gmia.diffusion); it takes
images f32[B, H, W, in_channels] and timesteps i32[B], and returns f32[B, H, W, out_channels].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
TIME_SCALE_SHIFTS = ("default", "scale_shift")


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       dtype: Any = jnp.float32, max_period: float = 10_000.0) -> jax.Array:
  """diffusers' get_timestep_embedding: f32[B, dim] from timesteps [B].

  Frequencies exp(-log(max_period) * k / (dim / 2 - freq_shift)), k < dim / 2; [sin, cos] of
  t times them, or [cos, sin] when flip_sin_to_cos; an odd `dim` is padded with a zero.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=dtype) / (half - freq_shift)
  angles = timesteps.astype(dtype)[:, None] * jnp.exp(exponent)[None, :]
  parts = [jnp.cos(angles), jnp.sin(angles)] if flip_sin_to_cos else [jnp.sin(angles),
                                                                      jnp.cos(angles)]
  if dim % 2:
    parts.append(jnp.zeros((len(timesteps), 1), dtype))
  return jnp.concatenate(parts, axis=-1)


def param_dtype(dtype: Any) -> jnp.dtype:
  """Parameters are float32, or float64 when computing in float64 (for exact comparisons)."""
  return jnp.promote_types(dtype, jnp.float32)


class _Layers:
  """The layer constructors of one network's dtype (torch's default layer settings)."""

  def __init__(self, dtype: Any):
    self.kw = {"dtype": dtype, "param_dtype": param_dtype(dtype)}

  def conv(self, features: int, name: str, kernel: int = 3, stride: int = 1,
           padding: Any = 1) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), (stride, stride),
                   padding=((padding, padding),) * 2 if isinstance(padding, int) else padding,
                   name=name, **self.kw)

  def dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, name=name, **self.kw)

  def group_norm(self, groups: int, eps: float, name: str) -> nn.GroupNorm:
    # The two-pass variance, as torch computes it: E[x^2] - E[x]^2 loses digits on features
    # whose mean is large against their spread.
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name,
                        **self.kw)


class ResnetBlock(nn.Module):
  """diffusers' ResnetBlock2D (pre-norm, SiLU, 3x3 convolutions, 1x1 shortcut when the channels
  change). x: [B, H, W, C_in]; temb: [B, T] -> [B, H, W, out_channels]."""
  out_channels: int
  groups: int
  eps: float
  time_scale_shift: str = "default"
  output_scale_factor: float = 1.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
    layers = _Layers(self.dtype)
    h = nn.silu(layers.group_norm(self.groups, self.eps, "norm1")(x))
    h = layers.conv(self.out_channels, "conv1")(h)
    scale_shift = self.time_scale_shift == "scale_shift"
    emb = layers.dense(self.out_channels * (2 if scale_shift else 1), "time_emb_proj")(
        nn.silu(temb))[:, None, None, :]
    if scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = layers.group_norm(self.groups, self.eps, "norm2")(h) * (1 + scale) + shift
    else:
      h = layers.group_norm(self.groups, self.eps, "norm2")(h + emb)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = layers.conv(self.out_channels, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = layers.conv(self.out_channels, "conv_shortcut", kernel=1, padding=0)(x)
    return (x + h) / self.output_scale_factor


class Attention(nn.Module):
  """diffusers' Attention as its spatial blocks use it: group norm (when `groups`), multi-head
  self-attention over the H * W positions, output projection, residual, / rescale factor."""
  heads: int
  head_dim: int
  groups: int | None
  eps: float
  rescale_output_factor: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layers = _Layers(self.dtype)
    batch, height, width, channels = x.shape
    h = x if self.groups is None else layers.group_norm(self.groups, self.eps, "group_norm")(x)
    h = h.reshape(batch, height * width, channels)
    inner = self.heads * self.head_dim
    q, k, v = (layers.dense(inner, name)(h).reshape(batch, -1, self.heads, self.head_dim)
               .transpose(0, 2, 1, 3) for name in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q / math.sqrt(self.head_dim), k)
    logits = logits.astype(param_dtype(self.dtype))
    # The softmax's normalisation applied after the product with v, to [.., q, d] rather than to
    # the [.., q, k] weights: 64 px attention at 32 px (1,024 positions) ran 0.40 s instead of
    # 0.67 s a layer on 2 CPU cores (batch 8, 8 heads), where it dominates the network.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = (jnp.einsum("bhqk,bhkd->bhqd", weights.astype(q.dtype), v)
           / weights.sum(axis=-1, keepdims=True).astype(q.dtype))
    out = out.transpose(0, 2, 1, 3).reshape(batch, -1, inner)
    out = layers.dense(channels, "to_out_0")(out).reshape(x.shape)
    return (out + x) / self.rescale_output_factor


class Downsample(nn.Module):
  """diffusers' Downsample2D with a convolution: 3x3, stride 2, `padding` on every side, or
  (padding 0) one pixel on the bottom and right only."""
  padding: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    padding = self.padding if self.padding else ((0, 1), (0, 1))
    return _Layers(self.dtype).conv(x.shape[-1], "conv", stride=2, padding=padding)(x)


class Upsample(nn.Module):
  """diffusers' Upsample2D with a convolution: nearest-neighbour x2, then 3x3."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
    x = x.reshape(batch, 2 * height, 2 * width, channels)
    return _Layers(self.dtype).conv(channels, "conv")(x)


class MidBlock(nn.Module):
  """diffusers' UNetMidBlock2D: resnet, attention (unless `head_dim` is None), resnet."""
  head_dim: int | None
  attn_groups: int | None
  output_scale_factor: float
  groups: int
  eps: float
  time_scale_shift: str
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    resnet = lambda name: ResnetBlock(width, self.groups, self.eps, self.time_scale_shift,
                                      self.output_scale_factor, self.dropout, self.dtype,
                                      name=name)
    x = resnet("resnets_0")(x, temb, train)
    if self.head_dim is not None:
      x = Attention(width // self.head_dim, self.head_dim, self.attn_groups, self.eps,
                    self.output_scale_factor, self.dtype, name="attentions_0")(x)
    return resnet("resnets_1")(x, temb, train)


class DownBlock(nn.Module):
  """DownBlock2D / AttnDownBlock2D: returns (features, the skip features of each layer)."""
  out_channels: int
  num_layers: int
  attention: bool
  downsample: bool
  head_dim: int
  groups: int
  eps: float
  time_scale_shift: str
  downsample_padding: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array,
               train: bool) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.eps, self.time_scale_shift,
                      dropout=self.dropout, dtype=self.dtype, name=f"resnets_{i}")(x, temb, train)
      if self.attention:
        x = Attention(self.out_channels // self.head_dim, self.head_dim, self.groups, self.eps,
                      dtype=self.dtype, name=f"attentions_{i}")(x)
      skips.append(x)
    if self.downsample:
      x = Downsample(self.downsample_padding, self.dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x, skips


class UpBlock(nn.Module):
  """UpBlock2D / AttnUpBlock2D: consumes the last `num_layers` skip features, last first."""
  out_channels: int
  num_layers: int
  attention: bool
  upsample: bool
  head_dim: int
  groups: int
  eps: float
  time_scale_shift: str
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array,
               train: bool) -> jax.Array:
    for i, skip in enumerate(reversed(skips)):
      x = jnp.concatenate([x, skip], axis=-1)
      x = ResnetBlock(self.out_channels, self.groups, self.eps, self.time_scale_shift,
                      dropout=self.dropout, dtype=self.dtype, name=f"resnets_{i}")(x, temb, train)
      if self.attention:
        x = Attention(self.out_channels // self.head_dim, self.head_dim, self.groups, self.eps,
                      dtype=self.dtype, name=f"attentions_{i}")(x)
    if self.upsample:
      x = Upsample(self.dtype, name="upsamplers_0")(x)
    return x


class UNet(nn.Module):
  """diffusers' UNet2DModel (positional time embedding, no class conditioning).

  Fields carry diffusers' config names and defaults. `mid_block_type` is "UNetMidBlock2D" or
  None; `attention_head_dim` None means one head per block (its width).
  """
  block_out_channels: Sequence[int] = (224, 448, 672, 896)
  down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                     "AttnDownBlock2D")
  up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                   "UpBlock2D")
  in_channels: int = 3
  out_channels: int = 3
  layers_per_block: int = 2
  attention_head_dim: int | None = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: int | None = None
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  time_embedding_dim: int | None = None
  mid_block_type: str | None = "UNetMidBlock2D"
  mid_block_scale_factor: float = 1.0
  add_attention: bool = True
  downsample_padding: int = 1
  resnet_time_scale_shift: str = "default"
  center_input_sample: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def check(self) -> None:
    """Raises ValueError naming the first field this module cannot build."""
    blocks = len(self.block_out_channels)
    if not blocks or len(self.down_block_types) != blocks or len(self.up_block_types) != blocks:
      raise ValueError(f"down_block_types, up_block_types and block_out_channels must have one "
                       f"entry per resolution, got {len(self.down_block_types)}, "
                       f"{len(self.up_block_types)} and {blocks}")
    for name, kinds, known in (("down_block_types", self.down_block_types, DOWN_BLOCKS),
                               ("up_block_types", self.up_block_types, UP_BLOCKS)):
      unknown = [kind for kind in kinds if kind not in known]
      if unknown:
        raise ValueError(f"{name}: block type {unknown[0]!r} is not supported (only "
                         f"{', '.join(known)})")
    if self.resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
      raise ValueError(f"resnet_time_scale_shift {self.resnet_time_scale_shift!r} is not "
                       f"supported (only {', '.join(TIME_SCALE_SHIFTS)})")
    if self.mid_block_type not in ("UNetMidBlock2D", None):
      raise ValueError(f"mid_block_type {self.mid_block_type!r} is not supported (only "
                       "UNetMidBlock2D or none)")
    groups = [self.norm_num_groups, *([self.attn_norm_num_groups]
                                      if self.attn_norm_num_groups else [])]
    for width in self.block_out_channels:
      if any(width % g for g in groups):
        raise ValueError(f"block_out_channels {list(self.block_out_channels)}: {width} is not "
                         f"divisible by the {groups} groups of group norm")
      if self.attention_head_dim and width % self.attention_head_dim:
        raise ValueError(f"block_out_channels {list(self.block_out_channels)}: {width} is not "
                         f"divisible by attention_head_dim {self.attention_head_dim}")

  def _head_dim(self, width: int) -> int:
    return self.attention_head_dim or width

  @nn.compact
  def __call__(self, x: jax.Array, timesteps: jax.Array, train: bool = False) -> jax.Array:
    """x: f32[B, H, W, in_channels], H and W divisible by 2^(blocks - 1); timesteps: [B] (or a
    scalar) -> f32[B, H, W, out_channels]. `train` turns dropout on (rng "dropout")."""
    self.check()
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"images must be [B, H, W, {self.in_channels}], got shape {x.shape}")
    factor = 2 ** (len(self.block_out_channels) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"image size {x.shape[1:3]} must be divisible by {factor} (the U-Net's "
                       "downsamplings)")
    layers = _Layers(self.dtype)
    common = dict(groups=self.norm_num_groups, eps=self.norm_eps,
                  time_scale_shift=self.resnet_time_scale_shift, dropout=self.dropout,
                  dtype=self.dtype)
    x = x.astype(self.dtype)
    if self.center_input_sample:
      x = 2 * x - 1.0
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (x.shape[0],))
    width0 = self.block_out_channels[0]
    temb = timestep_embedding(timesteps, width0, self.flip_sin_to_cos, self.freq_shift,
                              param_dtype(self.dtype)).astype(self.dtype)
    temb = TimeEmbedding(self.time_embedding_dim or 4 * width0, self.dtype,
                         name="time_embedding")(temb)

    x = layers.conv(width0, "conv_in")(x)
    skips = [x]
    for i, (kind, width) in enumerate(zip(self.down_block_types, self.block_out_channels)):
      x, block_skips = DownBlock(width, self.layers_per_block, kind == "AttnDownBlock2D",
                                 i < len(self.block_out_channels) - 1, self._head_dim(width),
                                 downsample_padding=self.downsample_padding,
                                 name=f"down_blocks_{i}", **common)(x, temb, train)
      skips.extend(block_skips)

    if self.mid_block_type is not None:
      width = self.block_out_channels[-1]
      attn_groups = self.attn_norm_num_groups or (
          self.norm_num_groups if self.resnet_time_scale_shift == "default" else None)
      x = MidBlock(self._head_dim(width) if self.add_attention else None, attn_groups,
                   self.mid_block_scale_factor, name="mid_block", **common)(x, temb, train)

    for i, (kind, width) in enumerate(zip(self.up_block_types,
                                          reversed(self.block_out_channels))):
      count = self.layers_per_block + 1
      block_skips, skips = skips[-count:], skips[:-count]
      x = UpBlock(width, count, kind == "AttnUpBlock2D", i < len(self.block_out_channels) - 1,
                  self._head_dim(width), name=f"up_blocks_{i}", **common)(x, block_skips, temb,
                                                                           train)

    x = nn.silu(layers.group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out")(x))
    return layers.conv(self.out_channels, "conv_out")(x)


class TimeEmbedding(nn.Module):
  """diffusers' TimestepEmbedding: linear_1, SiLU, linear_2."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    layers = _Layers(self.dtype)
    return layers.dense(self.features, "linear_2")(nn.silu(layers.dense(self.features,
                                                                        "linear_1")(x)))


def from_config(config: Any) -> UNet:
  """The U-Net a gmia diffusion run's config describes (`config.model`), checked against
  `config.data.resolution`."""
  m = config.model
  unet = UNet(block_out_channels=tuple(m.block_out_channels),
              down_block_types=tuple(m.down_block_types), up_block_types=tuple(m.up_block_types),
              layers_per_block=m.layers_per_block, attention_head_dim=m.attention_head_dim,
              norm_num_groups=m.norm_num_groups, flip_sin_to_cos=m.flip_sin_to_cos,
              freq_shift=m.freq_shift, dropout=m.dropout, dtype=jnp.dtype(m.dtype))
  unet.check()
  factor = 2 ** (len(m.block_out_channels) - 1)
  if config.data.resolution % factor:
    raise ValueError(f"data.resolution {config.data.resolution} must be divisible by {factor} "
                     f"(the {len(m.block_out_channels) - 1} downsamplings of the U-Net)")
  return unet
