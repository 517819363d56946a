"""Feed-forward inverse of a StyleGAN2 generator: image -> latent w (or W+).

A small convolutional network laid out like StyleGAN2's discriminator: from the generator's
resolution down to 4x4, at each resolution a 3x3 conv and a 2x average pool (feature maps
min(channel_base // res, channel_max)), then two dense layers. It predicts w as
`w_avg + w_std * head(features)`, with (w_avg, w_std) the generator's latent statistics held in
the `buffers` collection; the head's last layer starts at zero, so an untrained encoder predicts
w_avg, exactly where the projector starts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmia.models import stylegan


class LatentEncoder(nn.Module):
  """images f32[B, R, R, 3] in [-1, 1] -> w f32[B, w_dim] (W), or f32[B, num_ws, w_dim] (W+).

  resolution: the generator's image size R (a power of two >= 8); w_dim: its latent width;
  w_plus: one w per synthesis layer (num_ws(R) of them) instead of one for all.
  """
  resolution: int
  w_dim: int
  w_plus: bool = False
  channel_base: int = 1024
  channel_max: int = 128
  hidden: int = 256

  @property
  def num_outputs(self) -> int:
    """w vectors predicted per image: num_ws(resolution) for W+, else 1."""
    return stylegan.num_ws(self.resolution) if self.w_plus else 1

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    log2 = stylegan.check_resolution(self.resolution)
    expected = (self.resolution, self.resolution, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(f"latent encoder expects images f32[B, {', '.join(map(str, expected))}] "
                       f"at the generator's resolution, got shape {images.shape}")
    w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,))
    w_std = self.variable("buffers", "w_std", jnp.ones, (self.w_dim,))
    x = images.astype(jnp.float32)
    for res in (2 ** i for i in range(log2, 2, -1)):
      features = stylegan.channels_at(res, self.channel_base, self.channel_max)
      x = nn.leaky_relu(nn.Conv(features, (3, 3), name=f"conv{res}")(x), 0.2)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.leaky_relu(nn.Dense(self.hidden, name="fc")(x.reshape(x.shape[0], -1)), 0.2)
    out = nn.Dense(self.num_outputs * self.w_dim, kernel_init=nn.initializers.zeros,
                   name="out")(x)
    w = w_avg.value + w_std.value * out.reshape(x.shape[0], self.num_outputs, self.w_dim)
    return w if self.w_plus else w[:, 0]


def with_latent_statistics(variables: dict, w_avg: jax.Array, w_std: jax.Array) -> dict:
  """`variables` with the generator's latent mean f32[w_dim] and per-dimension spread
  f32[w_dim] (or a scalar) in `buffers`."""
  buffers = variables["buffers"]
  return dict(variables, buffers={
      "w_avg": jnp.broadcast_to(jnp.asarray(w_avg, jnp.float32), buffers["w_avg"].shape),
      "w_std": jnp.broadcast_to(jnp.asarray(w_std, jnp.float32), buffers["w_std"].shape)})


def check_matches_generator(encoder: LatentEncoder, generator: stylegan.Generator) -> None:
  """Raises ValueError when the encoder was built for a generator of another resolution or
  latent width."""
  if encoder.resolution != generator.img_resolution:
    raise ValueError(f"latent encoder was trained for {encoder.resolution} px images but the "
                     f"generator makes {generator.img_resolution} px ones")
  if encoder.w_dim != generator.w_dim:
    raise ValueError(f"latent encoder predicts w_dim={encoder.w_dim} but the generator's "
                     f"w_dim is {generator.w_dim}")


def from_config(config: Any, resolution: int, w_dim: int) -> LatentEncoder:
  """The encoder a run config's `model` block describes for a generator of `resolution` px
  images and latent width `w_dim`."""
  return LatentEncoder(resolution=resolution, w_dim=w_dim, w_plus=config.model.w_plus,
                       channel_base=config.model.channel_base,
                       channel_max=config.model.channel_max, hidden=config.model.hidden)
