"""StyleGAN2 generator and discriminator (Karras et al. 2020) in flax.linen, NHWC.

A port of the mathematics of NVIDIA's stylegan2-ada-pytorch `training/networks.py` (fp32):
mapping network with a tracked average w (conditional on class labels c when c_dim > 0),
synthesis network with the `skip` architecture, discriminator with the `resnet` (or `orig`)
architecture (projecting onto mapped labels when conditional), optional conv_clamp. Submodule
and parameter names follow NVIDIA's (`mapping/fc0/weight`, `synthesis/b8/conv0/affine/bias`,
`b4/out/weight`, ...).
Variables live in two collections: `params` (trained) and `buffers` (`w_avg`, `noise_const`).
Layouts differ from PyTorch: conv weights [kh, kw, in, out], dense weights [in, out], `const`
[4, 4, C], and the discriminator's `b4/fc` flattens [H, W, C] rather than [C, H, W].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmia.models import stylegan_ops as ops

NOISE_MODES = ("random", "const", "none")


def check_resolution(resolution: int) -> int:
  """Returns log2(resolution); raises for anything but a power of two >= 8."""
  if (not isinstance(resolution, (int, np.integer)) or resolution < 8
      or resolution & (resolution - 1)):
    raise ValueError(f"resolution must be a power of two >= 8, got {resolution!r}")
  return int(resolution).bit_length() - 1


def num_ws(resolution: int) -> int:
  """Number of w vectors the synthesis network consumes: two per block, one for b4's conv and one
  for the last toRGB."""
  return 2 * check_resolution(resolution) - 2


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
  """Feature maps at a given resolution: min(channel_base // res, channel_max)."""
  return min(channel_base // resolution, channel_max)


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """x / sqrt(mean(x^2) + eps) over the last axis."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def style_mix(key: jax.Array, ws: jax.Array, ws_mix: jax.Array, prob: float) -> jax.Array:
  """With probability `prob`, replaces ws[:, cutoff:] by ws_mix[:, cutoff:], cutoff ~ U{1..n-1}.

  One cutoff per batch, as NVIDIA's loss.run_G. ws, ws_mix: f32[B, num_ws, w_dim].
  """
  n = ws.shape[1]
  u_cutoff, u_mix = jax.random.uniform(key, (2,))
  cutoff = jnp.minimum(1 + jnp.floor(u_cutoff * (n - 1)).astype(jnp.int32), n - 1)
  cutoff = jnp.where(u_mix < prob, cutoff, n)
  return jnp.where((jnp.arange(n) < cutoff)[None, :, None], ws, ws_mix)


class MappingNetwork(nn.Module):
  """z f32[B, z_dim] -> ws f32[B, num_ws, w_dim]: normalised z through an lrelu MLP.

  With c_dim > 0, the normalised `embed`ding of the labels c f32[B, c_dim] is concatenated to
  z's (z may then be None: the discriminator maps labels alone). `update_w_avg=True` (in
  training, with `buffers` mutable) moves `w_avg` towards the batch mean with momentum
  w_avg_beta; truncation pulls the first `truncation_cutoff` ws (all when None) towards `w_avg`
  by `truncation_psi`. num_ws None: returns f32[B, w_dim] and keeps no w_avg.
  """
  w_dim: int
  num_ws: int | None
  num_layers: int = 8
  layer_features: int | None = None
  lr_multiplier: float = 0.01
  w_avg_beta: float = 0.995
  c_dim: int = 0
  embed_features: int | None = None

  @nn.compact
  def __call__(self, z: jax.Array | None, truncation_psi: float = 1.0,
               truncation_cutoff: int | None = None, update_w_avg: bool = False,
               c: jax.Array | None = None) -> jax.Array:
    inputs = []
    if z is not None:
      if z.ndim != 2:
        raise ValueError(f"mapping network expects z f32[B, z_dim], got shape {z.shape}")
      inputs.append(normalize_2nd_moment(z.astype(jnp.float32)))
    if self.c_dim:
      if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
        raise ValueError(f"conditional mapping network expects c f32[B, {self.c_dim}], got "
                         f"{None if c is None else c.shape}")
      embed = ops.Dense(self.embed_features or self.w_dim, name="embed")(c.astype(jnp.float32))
      inputs.append(normalize_2nd_moment(embed))
    if not inputs:
      raise ValueError("mapping network needs z or class labels c")
    x = jnp.concatenate(inputs, axis=1) if len(inputs) > 1 else inputs[0]
    for idx in range(self.num_layers):
      features = self.w_dim if idx == self.num_layers - 1 else (self.layer_features or self.w_dim)
      x = ops.Dense(features, activation="lrelu", lr_multiplier=self.lr_multiplier,
                    name=f"fc{idx}")(x)
    if self.num_ws is None:
      return x
    w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,))
    if update_w_avg and self.is_mutable_collection("buffers"):
      batch_mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
      w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
    ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
    if truncation_psi != 1.0:
      cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
      truncated = w_avg.value + truncation_psi * (ws - w_avg.value)
      ws = jnp.where((jnp.arange(self.num_ws) < cutoff)[None, :, None], truncated, ws)
    return ws


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (optionally upsampling) + per-pixel noise + bias + lrelu (clipped to
  +-conv_clamp when set).

  noise: f32[B, R, R, 1] for noise_mode "random" (drawn by the network), else None.
  """
  features: int
  resolution: int
  up: int = 1
  use_noise: bool = True
  fused_modconv: bool = False
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str = "random",
               noise: jax.Array | None = None) -> jax.Array:
    cin = x.shape[-1]
    styles = ops.Dense(cin, bias_init=1.0, name="affine")(w)
    weight = self.param("weight", jax.nn.initializers.normal(1.0), (3, 3, cin, self.features))
    x = ops.modulated_conv2d(x, weight, styles, up=self.up, padding=1, fused=self.fused_modconv)
    if self.use_noise:
      res = self.resolution
      noise_const = self.variable(
          "buffers", "noise_const", lambda: jax.random.normal(self.make_rng("params"), (res, res)))
      strength = self.param("noise_strength", jax.nn.initializers.zeros, ())
      if noise_mode == "random":
        x = x + noise * strength
      elif noise_mode == "const":
        x = x + noise_const.value[None, :, :, None] * strength
    bias = self.param("bias", jax.nn.initializers.zeros, (self.features,))
    return ops.bias_act(x, bias, "lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
  """Modulated 1x1 conv without demodulation to image channels (+ bias, clipped to
  +-conv_clamp when set)."""
  features: int
  fused_modconv: bool = False
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    styles = ops.Dense(cin, bias_init=1.0, name="affine")(w) * (1.0 / np.sqrt(cin))
    weight = self.param("weight", jax.nn.initializers.normal(1.0), (1, 1, cin, self.features))
    x = ops.modulated_conv2d(x, weight, styles, demodulate=False, fused=self.fused_modconv)
    bias = self.param("bias", jax.nn.initializers.zeros, (self.features,))
    return ops.bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the skip generator: [const | conv0 (up)] -> conv1 -> toRGB added to the
  upsampled image. Consumes ws f32[B, 3, w_dim] (b4: [B, 2, w_dim]); the toRGB w is shared with
  the next block's conv0, as NVIDIA's block_ws."""
  features: int
  resolution: int
  img_channels: int
  fused_modconv: bool = False
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array | None, img: jax.Array | None, ws: jax.Array, noise_mode: str,
               noise: tuple[jax.Array | None, jax.Array | None]) -> tuple[jax.Array, jax.Array]:
    layer = dict(features=self.features, resolution=self.resolution,
                 fused_modconv=self.fused_modconv, conv_clamp=self.conv_clamp)
    if x is None:
      const = self.param("const", jax.nn.initializers.normal(1.0),
                         (self.resolution, self.resolution, self.features))
      x = jnp.broadcast_to(const[None], (ws.shape[0],) + const.shape)
      w_idx = 0
    else:
      x = SynthesisLayer(up=2, name="conv0", **layer)(x, ws[:, 0], noise_mode, noise[0])
      w_idx = 1
    x = SynthesisLayer(name="conv1", **layer)(x, ws[:, w_idx], noise_mode, noise[1])
    y = ToRGBLayer(self.img_channels, self.fused_modconv, self.conv_clamp, name="torgb")(
        x, ws[:, w_idx + 1])
    img = y if img is None else ops.upsample2d(img) + y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws f32[B, num_ws, w_dim] -> images f32[B, R, R, img_channels] (about [-1, 1])."""
  img_resolution: int
  img_channels: int = 3
  channel_base: int = 32768
  channel_max: int = 512
  fused_modconv: bool = False
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, ws: jax.Array, noise_mode: str = "random") -> jax.Array:
    log2 = check_resolution(self.img_resolution)
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    if ws.ndim != 3 or ws.shape[1] != num_ws(self.img_resolution):
      raise ValueError(f"synthesis at {self.img_resolution} px expects ws f32[B, "
                       f"{num_ws(self.img_resolution)}, w_dim], got shape {ws.shape}")
    resolutions = [2 ** i for i in range(2, log2 + 1)]
    noise = self._draw_noise(ws.shape[0], resolutions) if noise_mode == "random" else {}
    x = img = None
    w_idx = 0
    for res in resolutions:
      block_ws = ws[:, w_idx:w_idx + (2 if res == 4 else 3)]
      w_idx += 1 if res == 4 else 2
      block_noise = (noise.get((res, 0)), noise.get((res, 1)))
      x, img = SynthesisBlock(channels_at(res, self.channel_base, self.channel_max), res,
                              self.img_channels, self.fused_modconv, self.conv_clamp,
                              name=f"b{res}")(x, img, block_ws, noise_mode, block_noise)
    return img

  def _draw_noise(self, batch: int, resolutions: list[int]) -> dict[tuple[int, int], jax.Array]:
    """Per-pixel noise of every layer, {(res, conv index): f32[B, res, res, 1]}, from one draw
    of the `noise` rng: one random call instead of one per layer (each costs compile time)."""
    layers = [(res, i) for res in resolutions for i in ((1,) if res == 4 else (0, 1))]
    sizes = [res * res for res, _ in layers]
    flat = jax.random.normal(self.make_rng("noise"), (batch, sum(sizes)))
    chunks = jnp.split(flat, np.cumsum(sizes)[:-1], axis=1)
    return {(res, i): c.reshape(batch, res, res, 1) for (res, i), c in zip(layers, chunks)}


class Generator(nn.Module):
  """z f32[B, z_dim] -> images f32[B, R, R, 3]: `mapping` then `synthesis`.

  Call `map` and `synthesize` through `apply(..., method=...)` to work in w space.
  Random noise needs the `noise` rng; w_avg tracking needs `buffers` mutable.
  c_dim > 0 makes the mapping conditional: `map` and `__call__` then need class labels
  c f32[B, c_dim] (one-hot, as NVIDIA's). The defaults of mapping_layer_features,
  embed_features (None: w_dim) and conv_clamp (None: no clipping) are NVIDIA's.
  `fused_modconv` runs each modulated convolution as one grouped convolution (NVIDIA's inference
  path) instead of scaling activations around a shared one; on XLA:CPU that is ~4x slower
  forward and ~20x slower in training (bench/bench_gan.py), hence off by default.
  """
  z_dim: int = 512
  w_dim: int = 512
  img_resolution: int = 256
  img_channels: int = 3
  mapping_layers: int = 8
  mapping_lr_multiplier: float = 0.01
  w_avg_beta: float = 0.995
  channel_base: int = 32768
  channel_max: int = 512
  fused_modconv: bool = False
  c_dim: int = 0
  mapping_layer_features: int | None = None
  embed_features: int | None = None
  conv_clamp: float | None = None

  def setup(self):
    self.num_ws = num_ws(self.img_resolution)
    self.mapping = MappingNetwork(self.w_dim, self.num_ws, self.mapping_layers,
                                  self.mapping_layer_features, self.mapping_lr_multiplier,
                                  self.w_avg_beta, self.c_dim, self.embed_features)
    self.synthesis = SynthesisNetwork(self.img_resolution, self.img_channels, self.channel_base,
                                      self.channel_max, self.fused_modconv, self.conv_clamp)

  def map(self, z: jax.Array, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
          update_w_avg: bool = False, c: jax.Array | None = None) -> jax.Array:
    """z f32[B, z_dim] (and c f32[B, c_dim] when conditional) -> ws f32[B, num_ws, w_dim]."""
    if z.ndim != 2 or z.shape[1] != self.z_dim:
      raise ValueError(f"generator expects z f32[B, {self.z_dim}], got shape {z.shape}")
    if self.c_dim and (c is None or c.shape != (z.shape[0], self.c_dim)):
      raise ValueError(f"conditional generator expects class labels c f32[{z.shape[0]}, "
                       f"{self.c_dim}], got {None if c is None else c.shape}")
    return self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg, c)

  def synthesize(self, ws: jax.Array, noise_mode: str = "random") -> jax.Array:
    """ws f32[B, num_ws, w_dim] -> images f32[B, R, R, 3]."""
    return self.synthesis(ws, noise_mode)

  def __call__(self, z: jax.Array, truncation_psi: float = 1.0,
               truncation_cutoff: int | None = None, noise_mode: str = "random",
               c: jax.Array | None = None) -> jax.Array:
    return self.synthesize(self.map(z, truncation_psi, truncation_cutoff, c=c), noise_mode)


class DiscriminatorBlock(nn.Module):
  """fromRGB (first block only) -> conv0 -> conv1 (down 2), with a 1x1 down skip (resnet)."""
  tmp_features: int
  features: int
  architecture: str = "resnet"
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array | None, img: jax.Array) -> jax.Array:
    clamp = self.conv_clamp
    if x is None:
      x = ops.Conv2d(self.tmp_features, 1, "lrelu", conv_clamp=clamp, name="fromrgb")(img)
    if self.architecture == "resnet":
      y = ops.Conv2d(self.features, 1, use_bias=False, down=2, name="skip")(x, np.sqrt(0.5))
      x = ops.Conv2d(self.tmp_features, 3, "lrelu", conv_clamp=clamp, name="conv0")(x)
      x = ops.Conv2d(self.features, 3, "lrelu", down=2, conv_clamp=clamp, name="conv1")(
          x, np.sqrt(0.5))
      return x + y
    x = ops.Conv2d(self.tmp_features, 3, "lrelu", conv_clamp=clamp, name="conv0")(x)
    return ops.Conv2d(self.features, 3, "lrelu", down=2, conv_clamp=clamp, name="conv1")(x)


class DiscriminatorEpilogue(nn.Module):
  """4x4 features -> minibatch std -> conv -> fc -> out: logits f32[B].

  Conditional (cmap_dim > 0): `out` gives f32[B, cmap_dim], projected onto the mapped labels
  cmap f32[B, cmap_dim] and scaled by 1 / sqrt(cmap_dim)."""
  features: int
  mbstd_group_size: int = 4
  mbstd_num_channels: int = 1
  conv_clamp: float | None = None
  cmap_dim: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, cmap: jax.Array | None = None) -> jax.Array:
    if self.mbstd_num_channels > 0:
      x = ops.minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = ops.Conv2d(self.features, 3, "lrelu", conv_clamp=self.conv_clamp, name="conv")(x)
    x = ops.Dense(self.features, activation="lrelu", name="fc")(x.reshape(x.shape[0], -1))
    x = ops.Dense(self.cmap_dim or 1, name="out")(x)
    if not self.cmap_dim:
      return x[:, 0]
    return jnp.sum(x * cmap, axis=1) * (1.0 / np.sqrt(self.cmap_dim))


class Discriminator(nn.Module):
  """images f32[B, R, R, 3] in [-1, 1] -> logits f32[B] (real > 0).

  c_dim > 0: conditional on class labels c f32[B, c_dim], mapped (NVIDIA's MappingNetwork of
  `mapping_layers` layers on the labels alone) to f32[B, cmap_dim] (None: the 4x4 channels).
  """
  img_resolution: int = 256
  img_channels: int = 3
  architecture: str = "resnet"
  channel_base: int = 32768
  channel_max: int = 512
  mbstd_group_size: int = 4
  mbstd_num_channels: int = 1
  c_dim: int = 0
  cmap_dim: int | None = None
  mapping_layers: int = 8
  mapping_lr_multiplier: float = 0.01
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, img: jax.Array, c: jax.Array | None = None) -> jax.Array:
    log2 = check_resolution(self.img_resolution)
    if self.architecture not in ("resnet", "orig"):
      raise ValueError(f"discriminator architecture must be 'resnet' or 'orig', got "
                       f"{self.architecture!r}")
    expected = (self.img_resolution, self.img_resolution, self.img_channels)
    if img.ndim != 4 or img.shape[1:] != expected:
      raise ValueError(f"discriminator expects images f32[B, {', '.join(map(str, expected))}], "
                       f"got shape {img.shape}")
    x = None
    for res in (2 ** i for i in range(log2, 2, -1)):
      x = DiscriminatorBlock(channels_at(res, self.channel_base, self.channel_max),
                             channels_at(res // 2, self.channel_base, self.channel_max),
                             self.architecture, self.conv_clamp, name=f"b{res}")(x, img)
    features = channels_at(4, self.channel_base, self.channel_max)
    cmap_dim = (self.cmap_dim or features) if self.c_dim else 0
    cmap = None
    if self.c_dim:
      if c is None or c.shape != (img.shape[0], self.c_dim):
        raise ValueError(f"conditional discriminator expects class labels c f32[{img.shape[0]}, "
                         f"{self.c_dim}], got {None if c is None else c.shape}")
      cmap = MappingNetwork(cmap_dim, None, self.mapping_layers,
                            lr_multiplier=self.mapping_lr_multiplier, c_dim=self.c_dim,
                            name="mapping")(None, c=c)
    return DiscriminatorEpilogue(features, self.mbstd_group_size, self.mbstd_num_channels,
                                 self.conv_clamp, cmap_dim, name="b4")(x, cmap)


def generator_from_config(config: Any) -> Generator:
  """The generator a gmia GAN run's config describes (`config.data.resolution`, `config.model`)."""
  m = config.model
  check_resolution(config.data.resolution)
  return Generator(z_dim=m.z_dim, w_dim=m.w_dim, mapping_layers=m.mapping_layers,
                   fused_modconv=m.fused_modconv, img_resolution=config.data.resolution,
                   channel_base=m.channel_base, channel_max=m.channel_max)
