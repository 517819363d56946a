"""StyleGAN2 generators: gmia training workdirs and NVIDIA stylegan2-ada-pytorch pickles."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmia import fingerprint, parallel
from gmia.data import run_data
from gmia.finite import check_finite
from gmia.models import import_stylegan2, stylegan
from gmia.runs import load_run
from gmia.sources.base import GRADIENTS, LATENTS, STYLEGAN, Source, file_digest, latents


def open_stylegan(kind: str, path: str, config: ml_collections.ConfigDict) -> Source:
  """A gmia workdir ("gmia") or an NVIDIA pickle ("stylegan2_pkl") as a source: sample i is
  G(z_i) with constant noise and config.truncation_psi."""
  if kind == "gmia":
    run = load_run(path, "gan")
    generator, g_vars = run.model, run.variables
    split_path = os.path.join(path, run_data.SPLIT_FILE)
    what = {"kind": kind, "step": run.step, "digest": fingerprint.tree_digest(g_vars)}
    extra = {"split_path": split_path if os.path.exists(split_path) else None,
             "data": run.config.data}
  else:
    class_idx = config.class_idx if config.class_idx >= 0 else None
    generator, g_vars, _ = import_stylegan2.load_generator(path, class_idx=class_idx)
    if generator.c_dim:
      raise ValueError(f"{path} is a conditional generator ({generator.c_dim} classes): set "
                       "config.class_idx to the class to sample")
    what = {"kind": kind, "sha256": file_digest(path), "class_idx": class_idx}
    extra = {}
  check_finite(g_vars, f"the generator {kind}:{path}")
  what["truncation_psi"] = float(config.truncation_psi)
  generate = _generate(generator, config.seed, float(config.truncation_psi))

  def sample(indices: np.ndarray, mesh: Mesh) -> jax.Array:
    return parallel.map_padded(functools.partial(generate, g_vars), indices, mesh)

  return Source(f"{kind}:{path}", kind, generator.img_resolution, sample, None,
                frozenset({LATENTS, GRADIENTS, STYLEGAN}), what, (generator, g_vars), **extra)


def _generate(generator: stylegan.Generator, seed: int, truncation_psi: float):
  @jax.jit
  def generate(g_vars, indices):
    z = latents(seed, indices, (generator.z_dim,))
    images = generator.apply(g_vars, z, truncation_psi, None, "const")
    return jnp.clip(images, -1.0, 1.0)
  return generate
