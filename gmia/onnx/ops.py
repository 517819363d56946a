"""ONNX operators as array functions, for JAX at run time and numpy at import.

Each operator is an `Op`: `fn(xp, attrs, *inputs)` returns one array or a tuple (one per node
output), with `xp` the array module (`jax.numpy` when the graph runs; `numpy` when a node whose
inputs are all constants is folded at import, so shape arithmetic keeps int64 and exact values).
Inputs in an op's `static` slots (shapes, axes, pads, scales) are numpy arrays known at import;
the others may be traced. Omitted optional inputs are None.

Layouts: tensors are ONNX's (NCHW...), except where `attrs.channels_last` is set: then the data
tensors of the node (`Op.layout` says which) hold their channel axis last (NHWC...), the layout
XLA:CPU's convolutions, matrix products and fused loops run fastest in (the channels are the
vectorised minor axis), and the op places its channels, spatial axes and axis attributes
accordingly; weights and other parameters stay in ONNX's layout.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import onnx
from jax import lax
from onnx import helper


class OpError(ValueError):
  """An attribute value or input form that this operator table does not implement."""


class Attributes:
  """A node's attributes (strings decoded, tensors as numpy) with its opset, output count and
  whether its data tensors are channels-last."""

  def __init__(self, values: dict[str, Any], opset: int, num_outputs: int,
               channels_last: bool = False):
    self._values, self.opset, self.num_outputs = values, opset, num_outputs
    self.channels_last = channels_last

  def get(self, name: str, default: Any = None) -> Any:
    return self._values.get(name, default)

  def __contains__(self, name: str) -> bool:
    return name in self._values

  def replace(self, channels_last: bool, **values: Any) -> Attributes:
    return Attributes({**self._values, **values}, self.opset, self.num_outputs, channels_last)


@dataclasses.dataclass(frozen=True)
class Op:
  """One operator: its function and how import treats its inputs.

  layout: how the op takes channels-last tensors. "onnx": it does not (its inputs are given in
  ONNX's layout); "elementwise": every non-static input is data, broadcast as in ONNX; "data":
  input 0 is data, the others parameters; "conv": as "data", and worth converting its input to
  (a convolution); "transpose": Transpose, whose permutation absorbs the layout.
  """
  fn: Callable[..., Any]
  static: frozenset[int] = frozenset()  # Input slots read as numpy values at import.
  numpy: bool = True  # fn also runs on numpy arrays (False: folding runs it in JAX).
  layout: str = "onnx"


def channels_last_perm(rank: int) -> tuple[int, ...]:
  """The permutation from ONNX's layout to channels-last: (0, 2, 3, 1) for rank 4."""
  return (0, *range(2, rank), 1) if rank >= 3 else tuple(range(rank))


def _position(a: Attributes, axis: int, rank: int) -> int:
  """Where ONNX's axis `axis` of a rank-`rank` data tensor lies in the array held."""
  axis = _axis(axis, rank)
  if not a.channels_last or rank < 3:
    return axis
  return rank - 1 if axis == 1 else axis - 1 if axis > 1 else 0


def _spatial(a: Attributes, x: Any) -> tuple[int, ...]:
  """The spatial axes (ONNX's 2, 3, ...) of data tensor x as held."""
  return tuple(range(1, x.ndim - 1)) if a.channels_last else tuple(range(2, x.ndim))


def _per_channel(a: Attributes, v: Any, ndim: int) -> Any:
  """A [C] vector shaped to broadcast along the channel axis of a rank-`ndim` data tensor."""
  return v.reshape((-1,) + (1,) * (ndim - 2)) if not a.channels_last else v.reshape(-1)


def _ints(values: Any) -> tuple[int, ...]:
  return tuple(int(v) for v in np.asarray(values).reshape(-1))


def _axis(axis: int, rank: int) -> int:
  return axis + rank if axis < 0 else axis


def _dtype(xp: Any, onnx_type: int) -> np.dtype:
  dtype = np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))
  return jax.dtypes.canonicalize_dtype(dtype) if xp is jnp else dtype


# Elementwise.

def _binary(name: str) -> Op:
  def fn(xp, a, x, y):
    if a.get("broadcast", 0) and "axis" in a:
      raise OpError("broadcast with an axis (opset < 7) is not supported")
    return getattr(xp, name)(x, y)
  return Op(fn, layout="elementwise")


def _div(xp, a, x, y):
  if a.get("broadcast", 0) and "axis" in a:
    raise OpError("broadcast with an axis (opset < 7) is not supported")
  if np.issubdtype(x.dtype, np.integer):
    # Integer division truncates toward zero, as C's does.
    return (x - np.fmod(x, y)) // y if xp is np else lax.div(x, y.astype(x.dtype))
  return x / y


def _pow(xp, a, x, y):
  # The result has the base's type, also for an integer base and a float exponent.
  return xp.power(x, y).astype(x.dtype)


def _unary(fn: Callable[[Any, Any], Any], numpy: bool = True) -> Op:
  return Op(lambda xp, a, x: fn(xp, x), numpy=numpy, layout="elementwise")


def _variadic(name: str) -> Op:
  return Op(lambda xp, a, *xs: functools.reduce(getattr(xp, name), xs), layout="elementwise")


def _prelu(xp, a, x, slope):
  return xp.where(x < 0, slope * x, x)


def _leaky_relu(xp, a, x):
  return xp.where(x < 0, a.get("alpha", 0.01) * x, x)


def _clip(xp, a, x, low=None, high=None):
  if a.opset < 11:
    low, high = a.get("min"), a.get("max")
  if low is not None:
    x = xp.maximum(x, xp.asarray(low, x.dtype))
  if high is not None:
    x = xp.minimum(x, xp.asarray(high, x.dtype))
  return x


def _softmax(log: bool):
  def fn(xp, a, x):
    axis = _axis(a.get("axis", -1 if a.opset >= 13 else 1), x.ndim)
    shape = x.shape
    if a.opset < 13:  # Older opsets softmax over the flattened trailing dims.
      x = x.reshape(int(np.prod(shape[:axis])), -1)
      axis = 1
    y = (jax.nn.log_softmax if log else jax.nn.softmax)(x, axis=axis)
    return y.reshape(shape)
  return Op(fn, numpy=False)


# Linear algebra and normalisation.

def _gemm(xp, a, x, w, c=None):
  x = x.T if a.get("transA", 0) else x
  w = w.T if a.get("transB", 0) else w
  y = a.get("alpha", 1.0) * (x @ w)
  return y if c is None else y + a.get("beta", 1.0) * c


def _batch_norm(xp, a, x, scale, bias, mean, var):
  if a.get("training_mode", 0) or a.num_outputs > 1:
    raise OpError("training_mode is not supported (inference graphs only)")
  if not a.get("spatial", 1):
    raise OpError("spatial=0 is not supported")
  factor = scale / xp.sqrt(var + a.get("epsilon", 1e-5))
  return x * _per_channel(a, factor, x.ndim) + _per_channel(a, bias - mean * factor, x.ndim)


# Convolution and pooling.

def _window_pads(a, spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...]) -> list[tuple[int, int]]:
  """(low, high) padding per spatial dim from pads or auto_pad."""
  auto_pad = a.get("auto_pad", "NOTSET")
  if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
    pads = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
      total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
      small = total // 2
      pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
    return pads
  if auto_pad == "VALID":
    return [(0, 0)] * len(spatial)
  if auto_pad != "NOTSET":
    raise OpError(f"auto_pad={auto_pad} is not supported")
  pads = a.get("pads", (0,) * 2 * len(spatial))
  n = len(spatial)
  return list(zip(pads[:n], pads[n:]))


def _window(a, x, kernel=None):
  spatial = tuple(x.shape[i] for i in _spatial(a, x))
  kernel = tuple(a.get("kernel_shape", kernel))
  strides = tuple(a.get("strides", (1,) * len(spatial)))
  dilations = tuple(a.get("dilations", (1,) * len(spatial)))
  return kernel, strides, dilations, _window_pads(a, spatial, kernel, strides, dilations)


def _taps(x, axes, kernel, strides, dilations, pads, fill=0.0, xp=jnp):
  """The strided slices of x (padded with `fill` along its spatial `axes`) that each kernel tap
  sees, in tap order. Convolutions with one filter per channel and pools are sums / maxima of
  them: XLA:CPU runs such a fused loop tens of times faster than its grouped convolution or
  reduce_window."""
  widths = [(0, 0)] * x.ndim
  for axis, pad in zip(axes, pads):
    widths[axis] = tuple(pad)
  x = xp.pad(x, widths, constant_values=np.asarray(fill, x.dtype))
  out_shape = [(x.shape[axis] - (k - 1) * d - 1) // s + 1
               for axis, k, s, d in zip(axes, kernel, strides, dilations)]
  for tap in itertools.product(*(range(k) for k in kernel)):
    index = [slice(None)] * x.ndim
    for axis, t, d, n, s in zip(axes, tap, dilations, out_shape, strides):
      index[axis] = slice(t * d, t * d + (n - 1) * s + 1, s)
    yield tap, x[tuple(index)]


def _depthwise(a, x, w, strides, pads, dilations):
  """A conv with one filter per channel, w: [C, 1, k...]."""
  if a.channels_last:
    # [k..., C], made in its own buffer: each tap's weights contiguous like the channels of x.
    # Fused into the loop (as XLA would), every element gathers them with a stride: 2x slower.
    w = lax.optimization_barrier(jnp.moveaxis(w[:, 0], 0, -1))
    return sum(shifted * w[tap] for tap, shifted in
               _taps(x, _spatial(a, x), w.shape[:-1], strides, dilations, pads))
  return sum(shifted * _per_channel(a, w[(slice(None), 0) + tap], x.ndim)
             for tap, shifted in _taps(x, _spatial(a, x), w.shape[2:], strides, dilations,
                                       pads))


def _channels_last_conv(x, w, strides, pads, groups, **dilations):
  """lax.conv_general_dilated of channels-last x and ONNX's weights [O, I, k...].

  The weights are transposed to [k..., I, O] here, where XLA:CPU's fast convolutions want
  them: left to XLA's layout assignment, weights that are arguments of a loop (lax.map over
  samples) stay [O, I, k...] and the convolution falls back to a loop 5-10x slower.
  """
  rank = x.ndim
  w = jnp.transpose(w, (*range(2, rank), 1, 0))
  data = (0, rank - 1, *range(1, rank - 1))
  numbers = lax.ConvDimensionNumbers(data, (rank - 1, rank - 2, *range(rank - 2)), data)
  return lax.conv_general_dilated(x, w, strides, pads, feature_group_count=groups,
                                  dimension_numbers=numbers, **dilations)


def _pointwise(x, w):
  """x: [N, C, ...] times w: [O, C] over C, as one matrix product."""
  return jnp.moveaxis(jnp.tensordot(w, x, axes=((1,), (1,))), 0, 1)


def _conv(xp, a, x, w, b=None):
  _, strides, dilations, pads = _window(a, x, w.shape[2:])
  groups = a.get("group", 1)
  w = w.astype(x.dtype)
  kernel = w.shape[2:]
  channels = x.shape[-1 if a.channels_last else 1]
  if groups > 1 and groups == channels == w.shape[0]:
    y = _depthwise(a, x, w, strides, pads, dilations)
  elif a.channels_last and groups == 1 and all(k == 1 for k in kernel):
    # A matrix product over the channels (XLA:CPU hands it to its fastest kernels).
    (_, shifted), = _taps(x, _spatial(a, x), kernel, strides, dilations, pads)
    y = lax.dot_general(shifted, w.reshape(w.shape[:2]), (((x.ndim - 1,), (1,)), ((), ())))
  elif a.channels_last:
    y = _channels_last_conv(x, w, strides, pads, groups, rhs_dilation=dilations)
  # In ONNX's layout XLA:CPU's convolution is slow for 1x1 kernels and few input channels:
  # those run as matrix products (equal results).
  elif groups == 1 and all(k == 1 for k in kernel):
    (_, shifted), = _taps(x, _spatial(a, x), kernel, strides, dilations, pads)
    y = _pointwise(shifted, w.reshape(w.shape[:2]))
  elif groups == 1 and x.shape[1] * int(np.prod(kernel)) <= 32:
    patches = jnp.stack([s for _, s in _taps(x, _spatial(a, x), kernel, strides, dilations,
                                             pads)], 2)
    patches = patches.reshape((patches.shape[0], -1) + patches.shape[3:])
    y = _pointwise(patches, w.reshape(w.shape[0], -1))
  else:
    y = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations,
                                 feature_group_count=groups)
  return y if b is None else y + _per_channel(a, b, x.ndim)


def _conv_transpose(xp, a, x, w, b=None):
  groups = a.get("group", 1)
  spatial = tuple(x.shape[i] for i in _spatial(a, x))
  n = len(spatial)
  kernel = tuple(a.get("kernel_shape", w.shape[2:]))
  strides = tuple(a.get("strides", (1,) * n))
  dilations = tuple(a.get("dilations", (1,) * n))
  extra = tuple(a.get("output_padding", (0,) * n))
  effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
  full = [s * (i - 1) + e + k for s, i, e, k in zip(strides, spatial, extra, effective)]
  auto_pad = a.get("auto_pad", "NOTSET")
  if "output_shape" in a or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
    target = (tuple(a.get("output_shape"))[-n:] if "output_shape" in a
              else tuple(i * s for i, s in zip(spatial, strides)))
    totals = [f - t for f, t in zip(full, target)]
    pads = [(total // 2, total - total // 2) if auto_pad == "SAME_UPPER"
            else (total - total // 2, total // 2) for total in totals]
  elif auto_pad == "VALID":
    pads = [(0, 0)] * n
  else:
    given = a.get("pads", (0,) * 2 * n)
    pads = list(zip(given[:n], given[n:]))
  # A transposed conv is a conv of the stride-dilated input with the flipped kernel, whose
  # [C_in, C_out / g] per-group layout becomes [C_out, C_in / g].
  c_in, c_out_g = w.shape[:2]
  kernel_w = w.reshape((groups, c_in // groups, c_out_g) + w.shape[2:])
  kernel_w = jnp.swapaxes(kernel_w, 1, 2).reshape((groups * c_out_g, c_in // groups) + w.shape[2:])
  kernel_w = jnp.flip(kernel_w, axis=tuple(range(2, 2 + n)))
  conv_pads = [(k - 1 - lo, k - 1 - hi + e) for k, (lo, hi), e in zip(effective, pads, extra)]
  kernel_w = kernel_w.astype(x.dtype)
  if a.channels_last:
    y = _channels_last_conv(x, kernel_w, (1,) * n, conv_pads, groups, lhs_dilation=strides,
                            rhs_dilation=dilations)
  else:
    y = lax.conv_general_dilated(x, kernel_w, (1,) * n, conv_pads, lhs_dilation=strides,
                                 rhs_dilation=dilations, feature_group_count=groups)
  return y if b is None else y + _per_channel(a, b, x.ndim)


def _pool_pads(a, x, kernel, strides, dilations, pads):
  """Adds the end padding that ceil_mode's extra window needs (a window must start inside)."""
  if not a.get("ceil_mode", 0):
    return pads
  out = []
  spatial = [x.shape[i] for i in _spatial(a, x)]
  for size, k, s, d, (lo, hi) in zip(spatial, kernel, strides, dilations, pads):
    effective = (k - 1) * d + 1
    count = -(-(size + lo + hi - effective) // s) + 1
    if (count - 1) * s >= size + lo:
      count -= 1
    out.append((lo, hi + max(0, (count - 1) * s + effective - (size + lo + hi))))
  return out


def _max_pool(xp, a, x):
  if a.num_outputs > 1:
    raise OpError("the Indices output is not supported")
  kernel, strides, dilations, pads = _window(a, x)
  pads = _pool_pads(a, x, kernel, strides, dilations, pads)
  taps = (shifted for _, shifted in _taps(x, _spatial(a, x), kernel, strides, dilations, pads,
                                          _extreme(x.dtype, low=True)))
  return functools.reduce(jnp.maximum, taps)


def _average_pool(xp, a, x):
  kernel, strides, dilations, pads = _window(a, x)
  ceil_pads = _pool_pads(a, x, kernel, strides, dilations, pads)
  axes = _spatial(a, x)
  total = sum(shifted for _, shifted in _taps(x, axes, kernel, strides, dilations, ceil_pads))
  # The divisor counts the input cells, and the explicit pads with count_include_pad, but never
  # the extra cells of ceil_mode.
  ones = np.ones([x.shape[i] if i in axes else 1 for i in range(x.ndim)], np.float32)
  counted = np.pad(ones, [pads[axes.index(i)] if i in axes else (0, 0) for i in range(x.ndim)],
                   constant_values=1.0 if a.get("count_include_pad", 0) else 0.0)
  extra = [(0, c[1] - p[1]) for c, p in zip(ceil_pads, pads)]
  counted = np.pad(counted, [extra[axes.index(i)] if i in axes else (0, 0)
                             for i in range(x.ndim)])
  count = sum(shifted for _, shifted in
              _taps(counted, axes, kernel, strides, dilations, [(0, 0)] * len(kernel), xp=np))
  return total / count.astype(x.dtype)


def _extreme(dtype: np.dtype, low: bool) -> Any:
  """The lowest (or highest) value of a dtype: an infinity, an integer bound, or False/True."""
  if np.issubdtype(dtype, np.bool_):
    return not low
  if np.issubdtype(dtype, np.integer):
    return np.iinfo(dtype).min if low else np.iinfo(dtype).max
  return -np.inf if low else np.inf


def _global_pool(name: str) -> Op:
  return Op(lambda xp, a, x: getattr(xp, name)(x, axis=_spatial(a, x), keepdims=True),
            layout="data")


def _reduce(name: str, axes_input_from: int) -> Op:
  def fn(xp, a, x, axes=None):
    axes = a.get("axes") if a.opset < axes_input_from else axes
    if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
      if a.get("noop_with_empty_axes", 0):
        return x
      axes = range(x.ndim)
    axes = tuple(_axis(i, x.ndim) for i in _ints(axes))
    keepdims = bool(a.get("keepdims", 1))
    if name == "l2":
      return xp.sqrt(xp.sum(x * x, axis=axes, keepdims=keepdims))
    if name in ("max", "min") and x.size == 0:  # ONNX's identities: -inf for max, inf for min.
      return xp.full([1 if i in axes else n for i, n in enumerate(x.shape) if keepdims or
                      i not in axes], _extreme(x.dtype, low=name == "max"), x.dtype)
    return getattr(xp, name)(x, axis=axes, keepdims=keepdims)
  return Op(fn, static=frozenset({1}))


# Shapes and indexing.

def _flatten(xp, a, x):
  axis = _axis(a.get("axis", 1), x.ndim)
  return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def _reshape(xp, a, x, shape=None):
  shape = list(_ints(a.get("shape") if a.opset < 5 else shape))
  if not a.get("allowzero", 0):
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
  return x.reshape(shape)


def _transpose(xp, a, x):
  return xp.transpose(x, a.get("perm", tuple(reversed(range(x.ndim)))))


def _slice_bounds(start: int, end: int, step: int, size: int) -> slice:
  """ONNX's clamping of Slice bounds as a Python slice."""
  start = start + size if start < 0 else start
  end = end + size if end < 0 else end
  if step > 0:
    return slice(min(max(start, 0), size), min(max(end, 0), size), step)
  start, end = min(max(start, -1), size - 1), min(max(end, -1), size - 1)
  return slice(start, None if end < 0 else end, step)


def _slice(xp, a, x, starts=None, ends=None, axes=None, steps=None):
  if a.opset < 10:
    starts, ends, axes = a.get("starts"), a.get("ends"), a.get("axes")
  starts, ends = _ints(starts), _ints(ends)
  axes = range(len(starts)) if axes is None else [_axis(i, x.ndim) for i in _ints(axes)]
  steps = (1,) * len(starts) if steps is None else _ints(steps)
  index = [slice(None)] * x.ndim
  for start, end, axis, step in zip(starts, ends, axes, steps):
    index[axis] = _slice_bounds(start, end, step, x.shape[axis])
  return x[tuple(index)]


def _split(xp, a, x, split=None):
  axis = _axis(a.get("axis", 0), x.ndim)
  split = a.get("split") if a.opset < 13 else split
  size = x.shape[axis]
  if split is None:
    count = a.get("num_outputs", a.num_outputs)
    chunk = -(-size // count)
    split = [min(chunk, size - i * chunk) for i in range(count)]
  offsets = np.cumsum((0,) + _ints(split))
  lead = (slice(None),) * axis
  return tuple(x[lead + (slice(int(lo), int(hi)),)] for lo, hi in zip(offsets[:-1], offsets[1:]))


def _squeeze(xp, a, x, axes=None):
  axes = a.get("axes") if a.opset < 13 else axes
  if axes is None:
    return xp.squeeze(x)
  return xp.squeeze(x, axis=tuple(_axis(i, x.ndim) for i in _ints(axes)))


def _unsqueeze(xp, a, x, axes=None):
  axes = _ints(a.get("axes") if a.opset < 13 else axes)
  rank = x.ndim + len(axes)
  return xp.expand_dims(x, tuple(sorted(_axis(i, rank) for i in axes)))


def _concat(xp, a, *xs):
  return xp.concatenate(xs, axis=_position(a, a.get("axis"), xs[0].ndim))


def _gather(xp, a, x, indices):
  axis = _axis(a.get("axis", 0), x.ndim)
  indices = xp.where(indices < 0, indices + x.shape[axis], indices)
  return xp.take(x, indices, axis=axis)


def _shape(xp, a, x):
  shape = np.asarray(x.shape, np.int64)
  return shape[a.get("start", 0):a.get("end", len(shape))]


def _pad(xp, a, x, pads=None, value=None, axes=None):
  if a.opset < 11:
    pads, value = a.get("pads", a.get("paddings")), a.get("value", 0.0)
  pads = _ints(pads)
  axes = range(x.ndim) if axes is None else _ints(axes)
  n = len(pads) // 2
  widths = [(0, 0)] * x.ndim
  for axis, lo, hi in zip(axes, pads[:n], pads[n:]):
    widths[_position(a, axis, x.ndim)] = (lo, hi)
  mode = a.get("mode", "constant")
  grow = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
  if mode == "constant":
    value = 0 if value is None else np.asarray(value).reshape(-1)[0]
    x = xp.pad(x, grow, constant_values=np.asarray(value, x.dtype))
  elif mode in ("reflect", "edge", "wrap"):
    x = xp.pad(x, grow, mode=mode)
  else:
    raise OpError(f"mode={mode} is not supported")
  crop = tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(widths))
  return x[crop]


_FLOAT8 = frozenset({onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
                     onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ})


def _cast(xp, a, x):
  to = a.get("to")
  if to in (onnx.TensorProto.STRING, onnx.TensorProto.FLOAT8E8M0):
    raise OpError(f"to={onnx.TensorProto.DataType.Name(to)} is not supported")
  dtype = _dtype(xp, to)
  if to in _FLOAT8 and a.get("saturate", 1):
    # Saturation: values past the largest finite float8, infinities included, become it.
    bound = float(ml_dtypes.finfo(dtype).max)
    x = xp.clip(x.astype(np.float32), -bound, bound)
  return x.astype(dtype)


def _constant(xp, a):
  for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
    if key in a:
      value = a.get(key)
      return np.asarray(value, np.float32 if "float" in key else np.int64 if "int" in key
                        else None)
  raise OpError("only value, value_float(s) and value_int(s) constants are supported")


def _constant_of_shape(xp, a, shape):
  value = a.get("value", np.zeros(1, np.float32))
  dtype = value.dtype if xp is np else jax.dtypes.canonicalize_dtype(value.dtype)
  return xp.full(_ints(shape), value.reshape(-1)[0], dtype=dtype)


def _range(xp, a, start, limit, delta):
  # xp.arange: under jax.eval_shape (which import runs first) nothing is allocated.
  dtype = start.dtype if xp is np else jax.dtypes.canonicalize_dtype(start.dtype)
  return xp.arange(start, limit, delta).astype(dtype)


def _dropout(xp, a, x, ratio=None, training_mode=None):
  ratio = a.get("ratio", 0.5) if a.opset < 12 else 0.5 if ratio is None else float(ratio)
  if training_mode is not None and bool(training_mode) and ratio > 0:
    raise OpError("training_mode=True is not supported (inference graphs only)")
  return x if a.num_outputs == 1 else (x, xp.ones(x.shape, bool))


def _dequantize(xp, a, x, scale, zero_point=None):
  """(x - zero_point) * scale per tensor, per axis, or per block of block_size along axis."""
  if zero_point is None:
    zero_point = xp.zeros_like(scale, dtype=x.dtype)
  if scale.ndim == 0 or scale.size == 1:
    scale, zero_point = scale.reshape(()), zero_point.reshape(())
  else:
    axis = _axis(a.get("axis", 1), x.ndim)
    block = a.get("block_size", 0)
    if block:
      scale, zero_point = (xp.repeat(v, block, axis=axis) for v in (scale, zero_point))
      index = tuple(slice(0, x.shape[axis]) if i == axis else slice(None) for i in range(x.ndim))
      scale, zero_point = scale[index], zero_point[index]
    elif scale.ndim == 1:
      shape = [1] * x.ndim
      shape[axis] = -1
      scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
  # Integers subtract exactly in int32; float8 and float4 values (whose zero point is 0) in
  # float32, which holds them exactly.
  wide = np.int32 if np.issubdtype(x.dtype, np.integer) else np.float32
  y = (x.astype(wide) - zero_point.astype(wide)).astype(scale.dtype) * scale
  return y.astype(_dtype(xp, a.get("output_dtype"))) if a.get("output_dtype") else y


# Resize.

MAX_RESIZED_LENGTH = 1 << 24  # Per axis: index arrays of that length are built at import.

def _resize_axis(a, size: int, out: int, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
  """Source indices [out] (nearest) or indices [2, out] with weights [out] (linear)."""
  kind = a.get("mode", "nearest")
  if kind not in ("nearest", "linear"):
    raise OpError(f"mode={kind} is not supported (nearest and linear are)")
  mode = a.get("coordinate_transformation_mode", "half_pixel" if a.opset >= 11 else "asymmetric")
  x = np.arange(out, dtype=np.float32)
  length = size * scale  # The output length before rounding down to `out`.
  if mode == "half_pixel":
    src = (x + 0.5) / scale - 0.5
  elif mode == "pytorch_half_pixel":
    src = (x + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(x)
  elif mode == "align_corners":
    if out > 1 and not np.isclose(length, out, rtol=1e-6, atol=0):
      # ONNX's reference divides by length - 1, onnxruntime and PyTorch by out - 1.
      raise OpError(f"align_corners with a scale that gives a fractional length ({size} x "
                    f"{scale:g} = {length:g}) is ambiguous: give sizes")
    src = x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
  elif mode == "asymmetric":
    src = x / scale
  elif mode == "half_pixel_symmetric":
    adjustment = out / length
    src = size / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5
  else:
    raise OpError(f"coordinate_transformation_mode={mode} is not supported")
  if kind == "nearest":
    rounding = a.get("nearest_mode", "round_prefer_floor")
    rounded = {"round_prefer_floor": lambda v: np.ceil(v - 0.5),
               "round_prefer_ceil": lambda v: np.floor(v + 0.5),
               "floor": np.floor, "ceil": np.ceil}
    if rounding not in rounded:
      raise OpError(f"nearest_mode={rounding} is not supported")
    return np.clip(rounded[rounding](src), 0, size - 1).astype(np.int32), None
  src = np.clip(src, 0, size - 1)
  low = np.floor(src).astype(np.int32)
  high = np.minimum(low + 1, size - 1)
  return np.stack([low, high]), (src - low).astype(np.float32)


def _resize(xp, a, x, roi=None, scales=None, sizes=None):
  if a.get("antialias", 0):
    raise OpError("antialias=1 is not supported")
  axes = [_position(a, i, x.ndim) for i in a.get("axes", range(x.ndim))]
  if scales is not None and np.size(scales) and not a.get("axes") and np.size(scales) != x.ndim:
    raise OpError(f"scales has {np.size(scales)} values for a rank-{x.ndim} input")
  if sizes is not None and np.size(sizes):
    outs = dict(zip(axes, _ints(sizes)))
    factors = {i: outs[i] / x.shape[i] for i in axes}
    policy = a.get("keep_aspect_ratio_policy", "stretch")
    if policy in ("not_larger", "not_smaller"):
      # One scale for all axes, the output sizes rounded half up from it.
      scale = (min if policy == "not_larger" else max)(factors.values())
      factors = dict.fromkeys(axes, scale)
      outs = {i: int(x.shape[i] * scale + 0.5) for i in axes}
    elif policy != "stretch":
      raise OpError(f"keep_aspect_ratio_policy={policy} is not supported")
  else:
    factors = dict(zip(axes, np.asarray(scales, np.float32).reshape(-1).tolist()))
    outs = {i: int(np.floor(x.shape[i] * factors[i])) for i in axes}
  if max(outs.values(), default=0) > MAX_RESIZED_LENGTH:
    raise OpError(f"output lengths {list(outs.values())} exceed {MAX_RESIZED_LENGTH}")
  for axis in axes:
    size, out = x.shape[axis], outs[axis]
    if size == out and factors[axis] == 1:
      continue
    indices, weights = _resize_axis(a, size, out, factors[axis])
    if weights is None:
      if out % size == 0 and np.array_equal(indices, np.arange(out) // (out // size)):
        x = xp.repeat(x, out // size, axis=axis)
      else:
        x = xp.take(x, indices, axis=axis)
      continue
    shape = [1] * x.ndim
    shape[axis] = out
    w = weights.reshape(shape).astype(x.dtype)
    x = xp.take(x, indices[0], axis=axis) * (1 - w) + xp.take(x, indices[1], axis=axis) * w
  return x


def _upsample(xp, a, x, scales=None):
  scales = a.get("scales") if scales is None else scales
  attrs = Attributes({"mode": a.get("mode", "nearest"), "nearest_mode": "floor",
                      "coordinate_transformation_mode": "asymmetric"}, a.opset, 1,
                     a.channels_last)
  return _resize(xp, attrs, x, None, scales)


OPS: dict[str, Op] = {
    "Add": _binary("add"), "Sub": _binary("subtract"), "Mul": _binary("multiply"),
    "Div": Op(_div, layout="elementwise"), "Pow": Op(_pow, layout="elementwise"), "Equal": _binary("equal"),
    "Less": _binary("less"), "Greater": _binary("greater"),
    "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _variadic("add"),
    "Where": Op(lambda xp, a, c, x, y: xp.where(c, x, y), layout="elementwise"),
    "Relu": _unary(lambda xp, x: xp.maximum(x, xp.zeros((), x.dtype))),
    "PRelu": Op(_prelu, layout="elementwise"), "LeakyRelu": Op(_leaky_relu, layout="elementwise"),
    "Sigmoid": _unary(lambda xp, x: jax.nn.sigmoid(x), numpy=False),
    "Tanh": _unary(lambda xp, x: xp.tanh(x)), "Exp": _unary(lambda xp, x: xp.exp(x)),
    "Log": _unary(lambda xp, x: xp.log(x)), "Sqrt": _unary(lambda xp, x: xp.sqrt(x)),
    "Neg": _unary(lambda xp, x: -x), "Abs": _unary(lambda xp, x: xp.abs(x)),
    "Floor": _unary(lambda xp, x: xp.floor(x)), "Ceil": _unary(lambda xp, x: xp.ceil(x)),
    "Reciprocal": _unary(lambda xp, x: 1 / x),
    "Clip": Op(_clip, layout="elementwise"), "Softmax": _softmax(log=False), "LogSoftmax": _softmax(log=True),
    "MatMul": Op(lambda xp, a, x, y: xp.matmul(x, y)), "Gemm": Op(_gemm),
    "BatchNormalization": Op(_batch_norm, layout="data"),
    "Conv": Op(_conv, numpy=False, layout="conv"),
    "ConvTranspose": Op(_conv_transpose, numpy=False, layout="conv"),
    "MaxPool": Op(_max_pool, numpy=False, layout="data"),
    "AveragePool": Op(_average_pool, numpy=False, layout="data"),
    "GlobalAveragePool": _global_pool("mean"), "GlobalMaxPool": _global_pool("max"),
    "ReduceMean": _reduce("mean", 18), "ReduceSum": _reduce("sum", 13),
    "ReduceMax": _reduce("max", 18), "ReduceMin": _reduce("min", 18),
    "ReduceProd": _reduce("prod", 18), "ReduceL2": _reduce("l2", 18),
    "Flatten": Op(_flatten), "Reshape": Op(_reshape, static=frozenset({1})),
    "Transpose": Op(_transpose, layout="transpose"), "Concat": Op(_concat, layout="elementwise"),
    "Slice": Op(_slice, static=frozenset({1, 2, 3, 4})),
    "Split": Op(_split, static=frozenset({1})),
    "Squeeze": Op(_squeeze, static=frozenset({1})),
    "Unsqueeze": Op(_unsqueeze, static=frozenset({1})),
    "Expand": Op(lambda xp, a, x, shape: xp.broadcast_to(
        x, np.broadcast_shapes(x.shape, _ints(shape))), static=frozenset({1})),
    "Tile": Op(lambda xp, a, x, reps: xp.tile(x, _ints(reps)), static=frozenset({1})),
    "Gather": Op(_gather), "Shape": Op(_shape),
    "Size": Op(lambda xp, a, x: np.asarray(int(np.prod(x.shape)), np.int64)),
    "Cast": Op(_cast, layout="elementwise"),
    "ConstantOfShape": Op(_constant_of_shape, static=frozenset({0})),
    "Range": Op(_range, static=frozenset({0, 1, 2})),
    "Pad": Op(_pad, static=frozenset({1, 2, 3}), layout="data"),
    "Resize": Op(_resize, static=frozenset({1, 2, 3}), layout="data"),
    "Upsample": Op(_upsample, static=frozenset({1}), layout="data"),
    "Constant": Op(_constant), "Identity": Op(lambda xp, a, x: x, layout="elementwise"),
    "Dropout": Op(_dropout, static=frozenset({1, 2}), layout="elementwise"),
    "DequantizeLinear": Op(_dequantize),
}
