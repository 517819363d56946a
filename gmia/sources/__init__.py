"""Generators to audit, wherever they were trained: one interface, five sources.

`--config.generator=KIND:PATH`:
  gmia:WORKDIR        a gmia training workdir (checkpoint + split.json): a StyleGAN2 or a DDPM
  stylegan2_pkl:FILE  an NVIDIA stylegan2-ada-pytorch pickle (read without running its code)
  diffusers:DIR       a diffusers UNet2DModel (or pipeline) folder: a released pixel-space DDPM
  onnx:FILE           any generator exported to ONNX (z -> image)
  images:PATH         a folder, .npz or .tar of images already sampled from any model (black box)

Every source gives sample i as a pure function of (seed, i), so chunks of any size, a resumed
run and a figure's single sample see the same images; a source says what else it supports
(`Source.supports`), and an attack that needs what a source lacks says so in one line.
"""

from gmia.sources.base import (DENOISER, GRADIENTS, KINDS, LATENTS, STYLEGAN, Source,
                               config_fields, latents, open_source, require)

__all__ = ["DENOISER", "GRADIENTS", "KINDS", "LATENTS", "STYLEGAN", "Source", "config_fields",
           "latents", "open_source", "require"]
