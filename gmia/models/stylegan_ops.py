"""Building blocks of StyleGAN2 in NHWC: FIR resampling, equalised-lr layers, modulated convolution.

The mathematics follows NVIDIA's stylegan2-ada-pytorch (torch_utils/ops and training/networks.py);
layouts are JAX's: images f32[B, H, W, C], conv weights f32[kh, kw, in, out], dense weights
f32[in, out]. Weights are stored N(0, 1) and scaled at call time (equalised learning rate), so a
weight imported from NVIDIA's [out, in, kh, kw] tensors only needs `transpose(2, 3, 1, 0)`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

RESAMPLE_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = float(np.sqrt(2.0))
ACTIVATIONS = ("linear", "lrelu")


def _pair(padding: int | Sequence[int]) -> tuple[int, int]:
  return (padding, padding) if isinstance(padding, int) else (int(padding[0]), int(padding[1]))


def _fir_axis(x: jax.Array, taps: np.ndarray, axis: int, down: int) -> jax.Array:
  """Valid-mode 1-D convolution along `axis` followed by keeping every `down`-th sample.

  Written as a weighted sum of strided slices, which XLA fuses into elementwise loops: on XLA:CPU
  the generator's gradient runs ~6x faster than with depthwise convolutions.
  """
  out_len = (x.shape[axis] - len(taps)) // down + 1
  if out_len <= 0:
    raise ValueError(f"upfirdn2d: axis of length {x.shape[axis]} is shorter than the filter")
  flipped = taps[::-1]  # true convolution, as NVIDIA's reference with flip_filter=False
  total = 0.0
  for k, tap in enumerate(flipped):
    total = total + float(tap) * jax.lax.slice_in_dim(
        x, k, k + (out_len - 1) * down + 1, stride=down, axis=axis)
  return total


def upfirdn2d(x: jax.Array, taps: Sequence[float] = RESAMPLE_TAPS, *, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, gain: float = 1.0) -> jax.Array:
  """Upsample by zero insertion, pad (negative crops), apply a separable FIR filter, decimate.

  x: f32[B, H, W, C]. `taps` is the 1-D filter; the 2-D filter is its normalised outer product
  times `gain`. `padding` is (before, after) for both spatial axes, counted after zero insertion,
  which appends `up - 1` zeros after every input sample. Returns
  f32[B, (H*up + p0 + p1 - len(taps)) // down + 1, (same for W), C].
  """
  if x.ndim != 4:
    raise ValueError(f"upfirdn2d expects f32[B, H, W, C], got shape {x.shape}")
  taps = np.asarray(taps, np.float64)
  taps = taps / taps.sum() * np.sqrt(gain)
  p0, p1 = _pair(padding)
  zero = jnp.zeros((), x.dtype)
  spatial = (p0, p1 + up - 1, up - 1)
  x = jax.lax.pad(x, zero, [(0, 0, 0), spatial, spatial, (0, 0, 0)])
  x = _fir_axis(x, taps, axis=1, down=down)
  return _fir_axis(x, taps, axis=2, down=down)


def upsample2d(x: jax.Array, taps: Sequence[float] = RESAMPLE_TAPS, *, up: int = 2,
               padding: int = 0) -> jax.Array:
  """FIR upsampling keeping the image centred: f32[B, H, W, C] -> f32[B, H*up, W*up, C]
  (plus 2 * padding)."""
  ntaps = len(taps)
  return upfirdn2d(x, taps, up=up, padding=(padding + (ntaps + up - 1) // 2,
                                            padding + (ntaps - up) // 2), gain=up * up)


def _conv(x: jax.Array, w: jax.Array, *, stride: int = 1, padding: int = 0,
          groups: int = 1) -> jax.Array:
  """Cross-correlation in NHWC/HWIO (what PyTorch's conv2d computes).

  A stride-1 convolution padded less than k // 2 runs as a 'same' one whose border is cropped:
  XLA:CPU runs unpadded 3x3 convolutions of 32 px batches 3-4x slower than padded ones of the
  same size (34 px in, 32 out: 30 ms vs 7 ms for 32 images x 32 channels on this project's
  2-core machine); the extra border costs little anywhere else.
  """
  crop = w.shape[0] // 2 - padding if stride == 1 else 0
  crop = max(crop, 0)
  y = jax.lax.conv_general_dilated(
      x, w, window_strides=(stride, stride), padding=[(padding + crop, padding + crop)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  return y[:, crop:y.shape[1] - crop, crop:y.shape[2] - crop] if crop else y


def conv2d_resample(x: jax.Array, w: jax.Array, *, up: int = 1, down: int = 1, padding: int = 0,
                    groups: int = 1, taps: Sequence[float] = RESAMPLE_TAPS) -> jax.Array:
  """2-D convolution fused with FIR up- or down-sampling by 2 (NVIDIA's conv2d_resample).

  x: f32[B, H, W, Cin]; w: f32[kh, kw, Cin // groups, Cout]. Upsampling equals NVIDIA's
  transposed convolution followed by the FIR filter, rearranged as zero insertion + FIR first and
  an ordinary (flipped-kernel) convolution after, which XLA runs as a plain convolution.
  Downsampling filters first, then convolves with stride 2.
  """
  if up > 1 and down > 1:
    raise ValueError("conv2d_resample supports up- or down-sampling, not both")
  if up > 1:
    return _conv(upsample2d(x, taps, up=up, padding=padding), w[::-1, ::-1], groups=groups)
  if down > 1:
    ntaps = len(taps)
    pad0 = padding + (ntaps - down + 1) // 2
    pad1 = padding + (ntaps - down) // 2
    x = upfirdn2d(x, taps, padding=(pad0, pad1))
    return _conv(x, w, stride=down, groups=groups)
  return _conv(x, w, padding=padding, groups=groups)


def bias_act(x: jax.Array, bias: jax.Array | None, activation: str = "linear",
             gain: float = 1.0, clamp: float | None = None) -> jax.Array:
  """Adds a per-channel bias, applies the activation, scales by its gain (lrelu: sqrt 2) and
  clips to [-clamp, clamp] when `clamp` is set (NVIDIA's conv_clamp, applied in fp32 too)."""
  if bias is not None:
    x = x + bias
  if activation == "lrelu":
    x = jax.nn.leaky_relu(x, LRELU_SLOPE) * (LRELU_GAIN * gain)
  elif activation == "linear":
    x = x * gain if gain != 1.0 else x
  else:
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
  return x if clamp is None else jnp.clip(x, -clamp, clamp)


def _check_activation(activation: str) -> None:
  if activation not in ACTIVATIONS:
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


class Dense(nn.Module):
  """Fully connected layer with equalised learning rate (NVIDIA's FullyConnectedLayer).

  weight f32[in, out] ~ N(0, 1) / lr_multiplier, scaled by lr_multiplier / sqrt(in) at call time,
  so Adam's effective step on it is lr * lr_multiplier whatever the fan-in.
  """
  features: int
  activation: str = "linear"
  use_bias: bool = True
  bias_init: float = 0.0
  lr_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_activation(self.activation)
    fan_in = x.shape[-1]
    weight = self.param("weight", lambda k, s: jax.random.normal(k, s) / self.lr_multiplier,
                        (fan_in, self.features))
    x = x @ (weight * (self.lr_multiplier / np.sqrt(fan_in)))
    bias = None
    if self.use_bias:
      bias = self.param("bias", lambda k, s: jnp.full(s, self.bias_init, jnp.float32),
                        (self.features,)) * self.lr_multiplier
    return bias_act(x, bias, self.activation)


class Conv2d(nn.Module):
  """Convolution with equalised learning rate and optional FIR resampling (NVIDIA's Conv2dLayer).

  x: f32[B, H, W, Cin] -> f32[B, H*up/down, W*up/down, features]. `gain` scales the output
  (the discriminator's residual branches use sqrt(0.5)); `conv_clamp` clips it to
  +-conv_clamp * gain.
  """
  features: int
  kernel_size: int
  activation: str = "linear"
  use_bias: bool = True
  up: int = 1
  down: int = 1
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
    _check_activation(self.activation)
    k, cin = self.kernel_size, x.shape[-1]
    weight = self.param("weight", jax.nn.initializers.normal(1.0), (k, k, cin, self.features))
    x = conv2d_resample(x, weight * (1.0 / np.sqrt(cin * k * k)), up=self.up, down=self.down,
                        padding=k // 2)
    bias = None
    if self.use_bias:
      bias = self.param("bias", jax.nn.initializers.zeros, (self.features,))
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return bias_act(x, bias, self.activation, gain, clamp)


def modulated_conv2d(x: jax.Array, weight: jax.Array, styles: jax.Array, *, up: int = 1,
                     padding: int = 0, demodulate: bool = True, fused: bool = False) -> jax.Array:
  """Convolution whose weights are scaled per sample by `styles`, then optionally demodulated.

  x: f32[B, H, W, Cin]; weight: f32[k, k, Cin, Cout]; styles: f32[B, Cin].
  Per sample b: w_b = weight * styles[b] (over Cin) and, with demodulation,
  w_b *= rsqrt(sum_{k, k, Cin} w_b^2 + 1e-8) per output channel. `fused=True` runs all samples as
  one grouped convolution (B groups); `fused=False` scales the activations instead and uses one
  shared convolution over the batch (NVIDIA's training path). Both compute the same function.
  Returns f32[B, H*up, W*up, Cout].
  """
  batch, cin = styles.shape
  if x.shape[0] != batch or x.shape[-1] != cin or weight.shape[2] != cin:
    raise ValueError(f"modulated_conv2d: x {x.shape}, weight {weight.shape} and styles "
                     f"{styles.shape} disagree on batch or input channels")
  dcoefs = None
  if demodulate:
    # sum_{k,k,i} (weight * s_i)^2 = s^2 @ sum_{k,k} weight^2: no per-sample weight tensor needed.
    dcoefs = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(0, 1)) + 1e-8)
  if not fused:
    x = conv2d_resample(x * styles[:, None, None, :], weight, up=up, padding=padding)
    return x if dcoefs is None else x * dcoefs[:, None, None, :]
  k, cout = weight.shape[0], weight.shape[-1]
  w = weight[None] * styles[:, None, None, :, None]
  if dcoefs is not None:
    w = w * dcoefs[:, None, None, None, :]
  w = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(k, k, cin, batch * cout)
  _, h, wd, _ = x.shape
  x = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, batch * cin)
  x = conv2d_resample(x, w, up=up, padding=padding, groups=batch)
  _, ho, wo, _ = x.shape
  return jnp.transpose(x.reshape(ho, wo, batch, cout), (2, 0, 1, 3))


def minibatch_std(x: jax.Array, group_size: int, num_channels: int = 1) -> jax.Array:
  """Appends the standard deviation of features across groups of samples (NVIDIA's layout).

  x: f32[N, H, W, C] -> f32[N, H, W, C + num_channels]. Sample n belongs to group n % (N / G)
  with G = min(group_size, N); the C channels are split into num_channels slices, each giving one
  statistic averaged over its channels and pixels.
  """
  n, h, w, c = x.shape
  g = min(group_size, n) if group_size else n
  if n % g or c % num_channels:
    raise ValueError(f"minibatch_std: batch {n} must be divisible by the group size {g} and "
                     f"channels {c} by num_channels {num_channels}")
  y = x.reshape(g, n // g, h, w, num_channels, c // num_channels)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [n/G, H, W, F, c]
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
  y = jnp.broadcast_to(jnp.tile(y, (g, 1))[:, None, None, :], (n, h, w, num_channels))
  return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
