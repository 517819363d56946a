"""The StyleGAN2 training loop: data, sharded state, checkpoints and resume, progress, grids.

`train_and_evaluate(config, workdir)` trains a target generator on the member identities'
training photos only, saving the identity split next to the run. A killed run restarts from its
latest checkpoint and reproduces the uninterrupted run bit for bit: the batch of step s is a pure
function of (seed, s) and so is the step's randomness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from gmia import parallel, viz
from gmia.checkpoint import Checkpointer, check_config_matches
from gmia.data import run_data
from gmia.data.pipeline import Batches
from gmia.gan import sampling, train_step
from gmia.models import stylegan
from gmia.progress import Progress

# Config fields that may change when a run is resumed: how long it runs and how it reports.
RESUMABLE_KEYS = frozenset({"total_steps", "log_every", "save_every", "keep_checkpoints",
                            "grid_size", "data.data_dir", "data.manual_dir"})
SAMPLES_DIR = "samples"


def default_config() -> ml_collections.ConfigDict:
  """NVIDIA's StyleGAN2 defaults (stylegan2-ada-pytorch train.py); configs override fields."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = run_data.default_config()  # data.resolution is the image size of G and D.
  config.train_group = "members"  # Whose training photos: "members", or "shadow" for a control.
  config.mirror = False          # x-flip augmentation of the real images.
  config.batch_size = 32
  config.total_steps = 10_000
  config.model = ml_collections.ConfigDict(dict(
      z_dim=512, w_dim=512,
      mapping_layers=8,          # 2 in the cifar / auto configs.
      channel_base=32768,        # fmaps * 32768; maps min(channel_base // res, channel_max).
      channel_max=512,
      fused_modconv=False,       # grouped conv for modulation: slower on CPU (bench/bench_gan.py).
      d_architecture="resnet",   # "orig" in the cifar config.
      mbstd_group_size=4,
      mbstd_num_channels=1))
  config.optim = ml_collections.ConfigDict(dict(
      g_lr=0.002, d_lr=0.002,
      betas=(0.0, 0.99),         # corrected for lazy regularisation by mb_ratio.
      eps=1e-8))
  config.loss = ml_collections.ConfigDict(dict(
      r1_gamma=10.0,             # auto: 0.0002 * res^2 / batch.
      d_reg_interval=16,         # lazy R1 every 16 steps.
      g_reg_interval=4,          # lazy path-length regularisation every 4 steps.
      pl_weight=2.0,             # 0 switches the path-length regulariser off.
      pl_decay=0.01,
      pl_batch_shrink=2,
      style_mixing_prob=0.9))
  config.ema_kimg = 10.0         # half-life of the generator EMA in thousands of images.
  config.ema_rampup = 0.0        # 0: none; else the half-life is capped at cur_nimg * ema_rampup.
  config.log_every = 100
  config.save_every = 1000
  config.keep_checkpoints = 3
  config.grid_size = 32          # samples in the PNG grid written at every save.
  return config


def _computation_fields(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """The config without RESUMABLE_KEYS: the fields that shape the computation."""
  return {k: _computation_fields(v, f"{prefix}{k}.") if isinstance(v, Mapping) else v
          for k, v in tree.items() if f"{prefix}{k}" not in RESUMABLE_KEYS}


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
  """Dotted paths of the leaves of a nested dict."""
  keys = []
  for name, value in tree.items():
    keys += (_flat_keys(value, f"{prefix}{name}.") if isinstance(value, Mapping)
             else [prefix + name])
  return keys


@dataclasses.dataclass(frozen=True)
class _Programs:
  models: train_step.GanModels
  init: Any
  step: Any
  sample: Any


@functools.lru_cache(maxsize=4)
def _programs(computation_json: str, mesh: Mesh) -> _Programs:
  """Models and compiled programs of a config, built once per process: compiling the step takes
  many seconds on CPU, and a resumed or extended run in the same process reuses it."""
  config = ml_collections.ConfigDict(json.loads(computation_json))
  models = train_step.build_models(config)
  # Initialisation runs once: compiled without backend optimisation, which compiles its many
  # random draws several times faster.
  init = jax.jit(lambda: train_step.init_state(config, models),
                 out_shardings=parallel.replicated(mesh)).lower().compile(
                     {"xla_backend_optimization_level": 0})
  return _Programs(models, init, train_step.make_train_step(config, models, mesh),
                   sampling.make_sampler(models.generator))


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats of the metrics measured this step (regularisers report NaN on skipped steps)."""
  values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
  return {k: v for k, v in values.items() if np.isfinite(v)}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> tuple[train_step.State, dict[str, float]]:
  """Trains (or resumes) a StyleGAN2 on the training photos of `config.train_group` (members).

  Returns the final state and the metrics of the last step.

  Writes to `workdir`: checkpoints/ (Orbax: state + meta {config, split}), split.json,
  samples/step_XXXXXXX.png (EMA generator on latents(config.seed)), tensorboard/.
  """
  stylegan.check_resolution(config.data.resolution)
  if config.train_group not in ("members", "shadow"):
    raise ValueError(f"train_group must be 'members' (the target) or 'shadow' (a control or "
                     f"reference generator), got {config.train_group!r}")
  if config.total_steps < 1 or config.save_every < 1 or config.log_every < 1:
    raise ValueError("total_steps, save_every and log_every must be positive")
  config_json = json.loads(config.to_json())
  computation = _computation_fields(config_json)
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    check_config_matches(ckpt.restore_meta(start)["config"], config_json, _flat_keys(computation))

  arrays, split = run_data.load_for_run(config.data, workdir)
  train_photos = split.train_photos(config.train_group)
  if not len(train_photos):
    raise ValueError(f"the identity split has no identities in group {config.train_group!r} "
                     "with training photos: the generator has nobody to learn")
  batches = Batches(arrays.select(train_photos).images, global_batch_size=config.batch_size,
                    seed=config.seed, mirror=config.mirror)
  meta = {"config": config_json, "split": split.to_json()}

  mesh = parallel.make_mesh()
  programs = _programs(json.dumps(computation, sort_keys=True), mesh)

  if start is None:
    start = 0
    state = programs.init()
  else:
    state, _ = ckpt.restore(start, train_step.abstract_state(config, programs.models, mesh))
    logging.info("resuming %s from step %d", workdir, start)

  grid_z = sampling.latents(config.seed, config.grid_size, config.model.z_dim)
  metrics = {}
  progress = Progress(config.total_steps, workdir=workdir, every_steps=config.log_every,
                      items_per_step=config.batch_size, start_step=start)
  with contextlib.closing(batches.iterate(start)) as stream:
    for step, local_batch in itertools.islice(stream, max(config.total_steps - start, 0)):
      state, step_metrics = programs.step(state, parallel.shard_batch(local_batch, mesh))
      done = step + 1
      if done % config.log_every == 0 or done == config.total_steps:
        metrics = _finite(step_metrics)
        progress.update(done, metrics)
      if done % config.save_every == 0 or done == config.total_steps:
        ckpt.save(done, state, meta)
        images = programs.sample({"params": state["g_ema"], "buffers": state["g_buffers"]},
                                 grid_z, jax.random.key(0))
        if jax.process_index() == 0:
          viz.save_grid(os.path.join(workdir, SAMPLES_DIR, f"step_{done:07d}.png"),
                        np.asarray(images), ncols=min(8, config.grid_size))
  ckpt.wait()
  ckpt.close()
  progress.close()
  return state, metrics
