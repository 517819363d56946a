"""StyleGAN2 generators: gmia GAN workdirs and NVIDIA stylegan2-ada-pytorch pickles."""

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
from gmia.runs import Run
from gmia.sources.base import GRADIENTS, LATENTS, STYLEGAN, Source, file_digest, latents


def from_run(run: Run, config: ml_collections.ConfigDict) -> Source:
  """A gmia GAN workdir as a source (its EMA generator)."""
  split_path = os.path.join(run.workdir, run_data.SPLIT_FILE)
  return _source(f"gmia:{run.workdir}", "gmia", run.model, run.variables,
                 {"kind": "gmia", "step": run.step,
                  "digest": fingerprint.tree_digest(run.variables)}, config,
                 split_path=split_path if os.path.exists(split_path) else None,
                 data=run.config.get("data"), train_group=run.config.get("train_group"))


def open_pickle(path: str, config: ml_collections.ConfigDict) -> Source:
  """An NVIDIA stylegan2-ada-pytorch pickle as a source (G_ema; one class of a conditional one)."""
  class_idx = config.class_idx if config.class_idx >= 0 else None
  generator, g_vars, _ = import_stylegan2.load_generator(path, class_idx=class_idx)
  if generator.c_dim:
    raise ValueError(f"{path} is a conditional generator ({generator.c_dim} classes): set "
                     "config.class_idx to the class to sample")
  return _source(f"stylegan2_pkl:{path}", "stylegan2_pkl", generator, g_vars,
                 {"kind": "stylegan2_pkl", "sha256": file_digest(path), "class_idx": class_idx},
                 config)


def _source(spec: str, kind: str, generator: stylegan.Generator, g_vars: dict, what: dict,
            config: ml_collections.ConfigDict, **extra) -> Source:
  """Sample i is G(z_i) with constant noise and config.truncation_psi."""
  check_finite(g_vars, f"the generator {spec}")
  what["truncation_psi"] = float(config.truncation_psi)
  generate = _generate(generator, config.seed, float(config.truncation_psi))

  def sample(indices: np.ndarray, mesh: Mesh) -> jax.Array:
    return parallel.map_padded(functools.partial(generate, g_vars), indices, mesh)

  return Source(spec, kind, generator.img_resolution, sample, None,
                frozenset({LATENTS, GRADIENTS, STYLEGAN}), what, (generator, g_vars), **extra)


def _generate(generator: stylegan.Generator, seed: int, truncation_psi: float):
  @jax.jit
  def generate(g_vars, indices):
    z = latents(seed, indices, (generator.z_dim,))
    images = generator.apply(g_vars, z, truncation_psi, None, "const")
    return jnp.clip(images, -1.0, 1.0)
  return generate
