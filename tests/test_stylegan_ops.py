"""StyleGAN2 ops against direct numpy references (float64 loops, NVIDIA's definitions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.models import stylegan_ops as ops

# NVIDIA's resampling filter (stylegan2-ada-pytorch's resample_filter=[1, 3, 3, 1]).
NVIDIA_TAPS = (1.0, 3.0, 3.0, 1.0)


def ref_upfirdn2d(x, taps, up=1, down=1, pad=(0, 0), gain=1.0):
  """Zero insertion, pad/crop, 2-D FIR (true convolution), decimation, as NVIDIA's reference."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  z = np.zeros((b, h * up, w * up, c))
  z[:, ::up, ::up] = x
  p0, p1 = pad
  z = np.pad(z, [(0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)])
  z = z[:, max(-p0, 0):z.shape[1] - max(-p1, 0), max(-p0, 0):z.shape[2] - max(-p1, 0)]
  f = np.outer(taps, taps).astype(np.float64)
  f = f / f.sum() * gain
  n = f.shape[0]
  out = np.zeros((b, z.shape[1] - n + 1, z.shape[2] - n + 1, c))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      patch = z[:, i:i + n, j:j + n]
      out[:, i, j] = np.einsum("bhwc,hw->bc", patch, f[::-1, ::-1])
  return out[:, ::down, ::down]


def ref_correlate(x, w, stride=1, padding=0):
  """Plain cross-correlation, x [B,H,W,Ci], w [k,k,Ci,Co]."""
  x = np.pad(np.asarray(x, np.float64), [(0, 0), (padding, padding), (padding, padding), (0, 0)])
  k = w.shape[0]
  ho = (x.shape[1] - k) // stride + 1
  wo = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = x[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride]
      out += np.einsum("bhwc,co->bhwo", patch, w[i, j])
  return out


def ref_conv_transpose(x, w, stride):
  """PyTorch conv_transpose2d without padding: scatter every input pixel times the kernel."""
  b, h, wd, _ = x.shape
  k = w.shape[0]
  out = np.zeros((b, (h - 1) * stride + k, (wd - 1) * stride + k, w.shape[-1]))
  for i in range(h):
    for j in range(wd):
      out[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          "bc,hwco->bhwo", x[:, i, j], w)
  return out


def ref_conv2d_resample(x, w, up=1, down=1, padding=0):
  """NVIDIA's conv2d_resample data path: transposed conv then FIR (up); FIR then strided conv
  (down); plain correlation otherwise."""
  k, taps = w.shape[0], NVIDIA_TAPS
  if up > 1:
    y = ref_conv_transpose(np.asarray(x, np.float64), w, up)
    pad0 = padding + (4 + up - 1) // 2 - (k - 1)
    pad1 = padding + (4 - up) // 2 - (k - up)
    return ref_upfirdn2d(y, taps, pad=(pad0, pad1), gain=up * up)
  if down > 1:
    y = ref_upfirdn2d(x, taps, pad=(padding + (4 - down + 1) // 2, padding + (4 - down) // 2))
    return ref_correlate(y, w, stride=down)
  return ref_correlate(x, w, padding=padding)


def ref_modulated_conv(x, weight, styles, up=1, padding=0, demodulate=True):
  """Per sample: explicit weight scaling and normalisation, then an ordinary convolution."""
  outs = []
  for b in range(x.shape[0]):
    w = np.asarray(weight, np.float64) * np.asarray(styles[b], np.float64)[None, None, :, None]
    if demodulate:
      w = w / np.sqrt(np.sum(w ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)
    outs.append(ref_conv2d_resample(x[b:b + 1], w, up=up, padding=padding)[0])
  return np.stack(outs)


@pytest.mark.parametrize("up,down,pad,gain", [
    (1, 1, (1, 2), 1.0), (2, 1, (2, 1), 4.0), (1, 2, (1, 1), 1.0), (2, 2, (-1, 3), 2.0),
    (1, 1, (-2, 0), 1.0)])
def test_upfirdn2d_matches_numpy_reference(up, down, pad, gain):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
  taps = (1.0, 2.0, 5.0, 3.0)  # asymmetric: catches a flipped filter
  got = ops.upfirdn2d(jnp.asarray(x), taps, up=up, down=down, padding=pad, gain=gain)
  want = ref_upfirdn2d(x, taps, up, down, pad, gain)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k,up,down", [(3, 1, 1), (3, 2, 1), (3, 1, 2), (1, 1, 2), (1, 2, 1)])
def test_conv2d_resample_matches_nvidia_data_path(k, up, down):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  w = rng.standard_normal((k, k, 4, 5)).astype(np.float32)
  got = ops.conv2d_resample(jnp.asarray(x), jnp.asarray(w), up=up, down=down, padding=k // 2)
  want = ref_conv2d_resample(x, w, up, down, padding=k // 2)
  assert got.shape == want.shape == (2, 8 * up // down, 8 * up // down, 5)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k,up,demodulate", [(3, 1, True), (3, 2, True), (1, 1, False)])
def test_modulated_conv_matches_naive_per_sample_reference(k, up, demodulate):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((3, 8, 8, 6)).astype(np.float32)
  weight = rng.standard_normal((k, k, 6, 5)).astype(np.float32)
  styles = (rng.standard_normal((3, 6)) + 1.0).astype(np.float32)
  want = ref_modulated_conv(x, weight, styles, up=up, padding=k // 2, demodulate=demodulate)
  outs = {}
  for fused in (True, False):
    outs[fused] = np.asarray(ops.modulated_conv2d(
        jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles), up=up, padding=k // 2,
        demodulate=demodulate, fused=fused))
    np.testing.assert_allclose(outs[fused], want, atol=1e-5, rtol=0)
  np.testing.assert_allclose(outs[True], outs[False], atol=1e-5, rtol=0)


def test_minibatch_std_matches_explicit_groups():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((8, 4, 4, 6)).astype(np.float32)
  got = np.asarray(ops.minibatch_std(jnp.asarray(x), group_size=4, num_channels=2))
  assert got.shape == (8, 4, 4, 8)
  np.testing.assert_array_equal(got[..., :6], x)
  for n in range(8):
    members = x[[m for m in range(8) if m % 2 == n % 2]].astype(np.float64)  # group n % (N/G)
    for f in range(2):
      sl = members[..., 3 * f:3 * f + 3]
      want = np.sqrt(sl.var(axis=0) + 1e-8).mean()
      np.testing.assert_allclose(got[n, :, :, 6 + f], want, rtol=1e-5)
  with pytest.raises(ValueError, match="divisible"):
    ops.minibatch_std(jnp.asarray(x[:6]), group_size=4)


def test_equalised_layers_scale_weights_at_call_time():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  conv = ops.Conv2d(5, 3, activation="lrelu")
  params = conv.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias
  w, b = np.asarray(params["params"]["weight"]), np.asarray(params["params"]["bias"])
  pre = ref_correlate(x, w / np.sqrt(4 * 9), padding=1) + b
  want = np.where(pre > 0, pre, 0.2 * pre) * np.sqrt(2)
  np.testing.assert_allclose(np.asarray(conv.apply(params, x)), want, atol=1e-5)

  dense = ops.Dense(3, lr_multiplier=0.01, bias_init=0.5)
  v = rng.standard_normal((2, 4)).astype(np.float32)
  params = dense.init(jax.random.key(1), v)["params"]
  assert np.std(np.asarray(params["weight"])) > 10  # stored as N(0, 1) / lr_multiplier
  want = v @ (np.asarray(params["weight"]) * 0.01 / 2) + 0.5 * 0.01
  np.testing.assert_allclose(np.asarray(dense.apply({"params": params}, v)), want, atol=1e-5)
