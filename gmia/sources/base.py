"""The generator source interface and its parsing (see gmia.sources)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmia.runs import load_run

KINDS = ("gmia", "stylegan2_pkl", "diffusers", "onnx", "images")
# What a source can do besides handing out samples by index.
LATENTS, GRADIENTS, STYLEGAN, DENOISER = "latents", "gradients", "stylegan", "denoiser"


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
  """A generator to audit.

  spec: "KIND:PATH" as given; resolution: side of its square RGB images.
  sample(indices i64[C], mesh) -> f32[C, R, R, 3] in [-1, 1], sample i a pure function of
    (seed, i), split over the mesh's data axis.
  num_available: how many samples there are (images: the files; None: unlimited).
  supports: of LATENTS (samples come from latents, z_i), GRADIENTS (differentiable in z),
    STYLEGAN (a gmia StyleGAN2 module: projection into W / W+, latent encoders) and DENOISER (a
    diffusion model's denoising network: the gray-box attack).
  fingerprint: what the source is (kind, checkpoint step, a hash of its parameters or file).
  stylegan: (generator, g_vars) for STYLEGAN sources; denoiser: (unet, variables, noise
    schedule) for DENOISER sources.
  split_path, data, train_group: a gmia run's split.json, data config and the split's group it
    was trained on (its training photos: those of that group).
  """
  spec: str
  kind: str
  resolution: int
  sample: Callable[[np.ndarray, Mesh], jax.Array]
  num_available: int | None
  supports: frozenset[str]
  fingerprint: dict[str, Any]
  stylegan: tuple[Any, Any] | None = None
  denoiser: tuple[Any, Any, Any] | None = None
  split_path: str | None = None
  data: ml_collections.ConfigDict | None = None
  train_group: str | None = None


def config_fields() -> dict[str, Any]:
  """The config fields that choose a generator and how it samples."""
  return {
      "generator": "",            # KIND:PATH (gmia:, stylegan2_pkl:, diffusers:, onnx:, images:).
      "seed": 0,                  # Sample i comes from (seed, i).
      "truncation_psi": 1.0,      # StyleGAN sources.
      "class_idx": -1,            # Conditional stylegan2_pkl: the class sampled.
      "generator_range": "auto",  # onnx: output range "-1,1", "0,1", "0,255"; auto: from the
                                  # graph's last operator (Tanh, Sigmoid).
      "diffusion_sampler": "ddim",  # Diffusion models: "ddim" (deterministic) or "ddpm".
      "diffusion_steps": 50,        # Denoising steps of a sample.
  }


def parse(spec: str) -> tuple[str, str]:
  """"KIND:PATH" -> (kind, path); a ValueError names what is wrong."""
  kind, separator, path = spec.partition(":")
  if not spec:
    raise ValueError("config.generator is required: KIND:PATH with KIND one of "
                     f"{', '.join(KINDS)} (e.g. gmia:runs/demo/gan)")
  if not separator or kind not in KINDS or not path:
    raise ValueError(f"config.generator={spec!r} is not KIND:PATH with KIND one of "
                     f"{', '.join(KINDS)} (e.g. gmia:runs/demo/gan, images:samples/)")
  return kind, path


def open_source(config: ml_collections.ConfigDict) -> Source:
  """The generator `config.generator` names, sampling as the config says."""
  kind, path = parse(config.generator)
  if kind == "gmia":
    run = load_run(path, ("gan", "diffusion"))
    if run.kind == "diffusion":
      from gmia.sources import diffusion
      return diffusion.from_run(run, config)
    from gmia.sources import stylegan
    return stylegan.from_run(run, config)
  if kind == "stylegan2_pkl":
    from gmia.sources import stylegan
    return stylegan.open_pickle(path, config)
  if kind == "diffusers":
    from gmia.sources import diffusion
    return diffusion.open_diffusers(path, config)
  if kind == "onnx":
    from gmia.sources import onnx_generator
    return onnx_generator.open_onnx(path, config)
  from gmia.sources import image_files
  return image_files.open_images(path)


def require(source: Source, capability: str, attack: str) -> None:
  """Raises ValueError unless `source` supports `capability` (what `attack` needs)."""
  if capability not in source.supports:
    needs = {STYLEGAN: "a StyleGAN2 generator (gmia: or stylegan2_pkl:)",
             LATENTS: "a generator with latents (gmia:, stylegan2_pkl: or onnx:)",
             GRADIENTS: "a differentiable generator (gmia:, stylegan2_pkl: or onnx:)",
             DENOISER: "a diffusion model (gmia: or diffusers:)"}[capability]
    raise ValueError(f"{attack} needs {needs}; {source.spec} is a {source.kind} source, which "
                     f"supports {sorted(source.supports) or 'sampling only'}")


def file_digest(path: str) -> str:
  """sha256 (hex, 16 digits) of a file's bytes, read in blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()[:16]


def latents(seed: int, indices: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """f32[C, *shape]: z_i ~ N(0, I) of sample i, from fold_in(key(seed), i) alone."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), shape))(indices)
