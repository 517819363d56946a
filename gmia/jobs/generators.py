"""The generator families a job trains as targets: StyleGAN2 (gmia.gan), DDPM (gmia.diffusion).

A job that trains target generators (the sweep, the privacy sweep) holds one trainer config per
family (`config.gan`, `config.diffusion`) and names the family of each generator it trains; the
trained workdir is a `gmia:` generator source whatever its family, so the attack that follows is
the same.
"""

from __future__ import annotations

from types import ModuleType

import ml_collections

from gmia import training
from gmia.attacks import denoising, identity_membership as im
from gmia.diffusion import trainer as diffusion_trainer
from gmia.gan import trainer as gan_trainer

FAMILIES: dict[str, ModuleType] = {gan_trainer.KIND: gan_trainer,
                                   diffusion_trainer.KIND: diffusion_trainer}
# The membership attack's scores of a trained generator of each family: the black-box variants
# from samples, and for a diffusion model the gray-box one from its denoiser.
ATTACK_VARIANTS: dict[str, tuple[str, ...]] = {gan_trainer.KIND: im.VARIANTS,
                                               diffusion_trainer.KIND: (*im.VARIANTS,
                                                                        denoising.VARIANT)}


def check(family: str) -> str:
  """`family` when it is one, else ValueError naming the families."""
  if family not in FAMILIES:
    raise ValueError(f"unknown generator family {family!r}; families: {tuple(FAMILIES)}")
  return family


def train(family: str, config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) a generator of `family` with its trainer `config` in `workdir`."""
  return FAMILIES[check(family)].train_and_evaluate(config, workdir)
