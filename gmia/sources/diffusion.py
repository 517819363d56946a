"""Diffusion models as generators: gmia DDPM workdirs and diffusers UNet2DModel folders.

Sample i is the DDIM (or ancestral DDPM) chain of `config.diffusion_steps` steps from the noise
drawn from (seed, i) alone (gmia.diffusion.sampling), so any chunk of indices gives the same
images. The source also hands out its denoiser (`Source.denoiser`), which the gray-box attack
reads: the network's error on a person's photos (gmia.attacks.denoising).
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmia import fingerprint, parallel
from gmia.data import run_data
from gmia.diffusion import sampling
from gmia.finite import check_finite
from gmia.models import import_diffusers
from gmia.runs import Run
from gmia.sources.base import DENOISER, Source, file_digest


def from_run(run: Run, config: ml_collections.ConfigDict) -> Source:
  """A gmia diffusion workdir as a source (its EMA weights)."""
  split_path = os.path.join(run.workdir, run_data.SPLIT_FILE)
  return _source(f"gmia:{run.workdir}", "gmia", run.model, run.variables, run.schedule,
                 run.input_size, {"kind": "gmia", "step": run.step,
                                  "digest": fingerprint.tree_digest(run.variables)}, config,
                 split_path=split_path if os.path.exists(split_path) else None,
                 data=run.config.get("data"), train_group=run.config.get("train_group"))


def open_diffusers(path: str, config: ml_collections.ConfigDict) -> Source:
  """A diffusers UNet2DModel (or pipeline) folder as a source."""
  unet, variables, info = import_diffusers.load_unet(path)
  if info["channels"] != 3:
    raise ValueError(f"{path}: the model draws {info['channels']}-channel images; face matchers "
                     "read RGB (3 channels)")
  if not info["resolution"]:
    raise ValueError(f"{path}: its config.json gives no sample_size, the side of the images")
  return _source(f"diffusers:{path}", "diffusers", unet, variables, info["schedule"],
                 info["resolution"], {"kind": "diffusers", "sha256": file_digest(info["weights"])},
                 config)


def _source(spec: str, kind: str, unet, variables, schedule, resolution: int, what: dict,
            config: ml_collections.ConfigDict, **extra) -> Source:
  check_finite(variables, f"the generator {spec}")
  generate = sampling.make_generate(unet, schedule, sampler=config.diffusion_sampler,
                                    num_steps=config.diffusion_steps, resolution=resolution)
  what.update(sampler=config.diffusion_sampler, steps=int(config.diffusion_steps))

  def sample(indices: np.ndarray, mesh: Mesh) -> jax.Array:
    return parallel.map_padded(
        functools.partial(generate, variables, seed=np.int32(config.seed)), indices, mesh)

  return Source(spec, kind, resolution, sample, None, frozenset({DENOISER}), what,
                denoiser=(unet, variables, schedule), **extra)
