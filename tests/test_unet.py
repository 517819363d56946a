"""The U-Net's own pieces: the timestep embedding against its formula, the attention block against
numpy, shapes, float64, and the errors of a network it cannot build (its outputs against diffusers
are in test_import_diffusers.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.models import unet as unet_lib
from tests.test_diffusion_sampling import random_variables

SMALL = dict(block_out_channels=(4, 8), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
             norm_num_groups=2, attention_head_dim=4)


@pytest.mark.parametrize("dim,flip,shift", [(8, True, 0), (7, False, 1), (16, False, 1)])
def test_timestep_embedding_follows_the_formula(dim, flip, shift):
  t = np.array([0, 1, 37, 999])
  half = dim // 2
  freqs = np.exp(-math.log(10_000) * np.arange(half) / (half - shift))
  angles = t[:, None] * freqs[None]
  want = np.concatenate([np.cos(angles), np.sin(angles)] if flip else
                        [np.sin(angles), np.cos(angles)], axis=1)
  if dim % 2:
    want = np.pad(want, ((0, 0), (0, 1)))
  got = unet_lib.timestep_embedding(jnp.asarray(t), dim, flip, shift)
  np.testing.assert_allclose(got, want, atol=2e-4)  # float32 angles up to ~1000 rad.


def test_attention_is_softmax_attention_over_positions():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 3, 8)).astype(np.float32)
  block = unet_lib.Attention(heads=2, head_dim=4, groups=None, eps=1e-5, rescale_output_factor=2.0)
  variables = block.init(jax.random.key(0), x)
  p = jax.tree.map(np.asarray, variables["params"])
  h = x.reshape(2, 9, 8)
  q, k, v = (h @ p[n]["kernel"] + p[n]["bias"] for n in ("to_q", "to_k", "to_v"))
  heads = lambda a: a.reshape(2, 9, 2, 4).transpose(0, 2, 1, 3)
  logits = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 2.0
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = (weights @ heads(v)).transpose(0, 2, 1, 3).reshape(2, 9, 8)
  out = out @ p["to_out_0"]["kernel"] + p["to_out_0"]["bias"]
  want = (out.reshape(x.shape) + x) / 2.0
  np.testing.assert_allclose(block.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def test_shapes_dtypes_and_scalar_timesteps():
  net = unet_lib.UNet(**SMALL)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
  variables = random_variables(net, 0)
  apply = jax.jit(net.apply)
  out = apply(variables, x, jnp.array([5, 5]))
  assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(apply(variables, x, 5), out)
  assert not np.allclose(apply(variables, x, jnp.array([5, 900])), out)
  with jax.enable_x64(True):
    wide = unet_lib.UNet(**SMALL, dtype=jnp.float64)
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    out64 = jax.jit(wide.apply)(params64, x.astype(jnp.float64), jnp.array([5, 5]))
    assert out64.dtype == jnp.float64
    np.testing.assert_allclose(out64, out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fields,shape,match", [
    ({}, (1, 8, 8, 1), r"images must be \[B, H, W, 3\]"),
    ({}, (1, 9, 8, 3), r"image size \(9, 8\) must be divisible by 2"),
    (dict(down_block_types=("DownBlock2D", "KDownBlock2D")), (1, 8, 8, 3),
     "down_block_types: block type 'KDownBlock2D' is not supported"),
    (dict(norm_num_groups=3), (1, 8, 8, 3), "4 is not divisible by the \\[3\\] groups"),
    (dict(block_out_channels=(4,)), (1, 8, 8, 3), "one entry per resolution"),
    (dict(resnet_time_scale_shift="spatial"), (1, 8, 8, 3),
     "resnet_time_scale_shift 'spatial' is not supported"),
])
def test_clear_errors(fields, shape, match):
  net = unet_lib.UNet(**{**SMALL, **fields})
  with pytest.raises(ValueError, match=match):
    net.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((1,), jnp.int32))
