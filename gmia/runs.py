"""Trained runs read back: one loader for every kind of workdir gmia's trainers write.

`load_run(workdir, kind)` opens the workdir's checkpoint read-only, once, restores the newest
intact step (or `step`) with every array replicated over the devices (whatever topology trained
it), and returns the model its metadata describes, the variables inference needs and the
metadata itself. Readers of trained models (face matchers, generator sources, split networks,
decoders, latent encoders, calibration) call this, never a trainer, so nothing below the jobs
imports a training pipeline to use a model; and what a checkpoint records (its config, input
size, split, classes) is read from the one metadata this returns, not by opening it again.

  kind            model                       variables
  gan             stylegan.Generator          {"params": EMA (or raw) weights, "buffers"}
  face_encoder    iresnet.IResNet             {"params", "batch_stats"}
  classifier      classifiers.ResNetClassifier {"params", "batch_stats"}
  latent_encoder  latent_encoder.LatentEncoder {"params", "buffers"}
  decoder         {layer: decoders.Decoder}    {layer: {"params", "stats"}}
  diffusion       unet.UNet                    {"params": EMA (or raw) weights}; and `schedule`
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from gmia.checkpoint import Checkpointer
from gmia.models import (classifiers, decoders, iresnet, latent_encoder, noise_schedule, stylegan,
                         unet)

State = dict[str, Any]
Meta = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: its model, the variables inference needs, the checkpoint's metadata (meta:
  "kind", "config" and what the trainer recorded) and the step they come from."""
  workdir: str
  kind: str
  step: int
  model: Any
  variables: Any
  meta: Meta

  @property
  def config(self) -> ml_collections.ConfigDict:
    """The config the run was trained with."""
    return ml_collections.ConfigDict(self.meta["config"])

  @property
  def input_size(self) -> int:
    """Side of the square images the network reads (its output for a generator)."""
    config = self.meta["config"]
    if self.kind in ("face_encoder", "classifier"):
      return int(config["model"]["input_size"])
    if self.kind in ("gan", "diffusion"):
      return int(config["data"]["resolution"])
    if self.kind == "decoder":
      return int(self.meta["image_size"])
    if self.kind == "latent_encoder":
      return int(self.meta["generator"]["img_resolution"])
    raise ValueError(f"a {self.kind} run reads no images")

  @property
  def schedule(self) -> noise_schedule.Schedule:
    """A diffusion run's noise schedule."""
    if self.kind != "diffusion":
      raise ValueError(f"a {self.kind} run has no noise schedule")
    return noise_schedule.from_config(self.config.schedule)


def _gan(state: State, meta: Meta, ema: bool) -> tuple[Any, Any]:
  config = ml_collections.ConfigDict(meta["config"])
  return stylegan.generator_from_config(config), {
      "params": state["g_ema"] if ema else state["g_params"], "buffers": state["g_buffers"]}


def _face_encoder(state: State, meta: Meta, _: bool) -> tuple[Any, Any]:
  model = iresnet.from_config(ml_collections.ConfigDict(meta["config"]["model"]))
  return model, {"params": state["params"]["backbone"], "batch_stats": state["batch_stats"]}


def _classifier(state: State, meta: Meta, _: bool) -> tuple[Any, Any]:
  model = classifiers.from_config(ml_collections.ConfigDict(meta["config"]["model"]),
                                  len(meta["classes"]))
  return model, {"params": state["params"], "batch_stats": state["batch_stats"]}


def _latent_encoder(state: State, meta: Meta, _: bool) -> tuple[Any, Any]:
  model = latent_encoder.from_config(ml_collections.ConfigDict(meta["config"]),
                                     meta["generator"]["img_resolution"],
                                     meta["generator"]["w_dim"])
  return model, {"params": state["params"], "buffers": state["buffers"]}


def _decoders(state: State, meta: Meta, _: bool) -> tuple[Any, Any]:
  models = decoders.make_decoders(meta["decoders"], meta["config"]["decoder"])
  return models, decoders.decoder_variables(meta["network"]["layers"], models, state)


def _diffusion(state: State, meta: Meta, ema: bool) -> tuple[Any, Any]:
  model = unet.from_config(ml_collections.ConfigDict(meta["config"]))
  return model, {"params": state["ema"] if ema else state["params"]}


# kind -> (state, meta, ema) -> (model, variables).
READERS: dict[str, Callable[[State, Meta, bool], tuple[Any, Any]]] = {
    "gan": _gan, "face_encoder": _face_encoder, "classifier": _classifier,
    "latent_encoder": _latent_encoder, "decoder": _decoders, "diffusion": _diffusion}


def load_run(workdir: str, kind: str | tuple[str, ...] | None = None, *,
             step: int | None = None, ema: bool = True) -> Run:
  """The run trained in `workdir` (the newest intact checkpoint unless `step`).

  kind: the kind of run expected (one of READERS, several, or None for any); another kind is a
  one-line ValueError naming the workdir. ema: for a GAN or a diffusion model, the EMA weights
  (False: the raw ones).
  """
  expected = (kind,) if isinstance(kind, str) else kind
  for name in expected or ():
    if name not in READERS:
      raise ValueError(f"unknown kind of run {name!r}; kinds: {sorted(READERS)}")
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.latest_step() if step is None else step
    meta = checkpointer.restore_meta(step)
    found = meta.get("kind")
    if found not in READERS or (expected and found not in expected):
      wanted = " or ".join(expected) if expected else "a run gmia can load"
      raise ValueError(f"{workdir} holds a {found} checkpoint, not {wanted}: check the path")
    state, meta = checkpointer.restore_replicated(step, kind=found)
  finally:
    checkpointer.close()
  model, variables = READERS[found](state, meta, ema)
  return Run(workdir, found, int(step), model, variables, meta)
