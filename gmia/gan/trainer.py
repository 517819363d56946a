"""StyleGAN2 training as a task of the gmia training loop: data, models, step, sample grids.

`train_and_evaluate(config, workdir)` trains a target generator on the training photos of
`config.train_group`'s identities only (the members; the shadow identities for a control),
saving the identity split next to the run. The loop (gmia.training) resumes a killed run from
its latest checkpoint and reproduces the uninterrupted run bit for bit: the batch of step s is a
pure function of (seed, s) and so is the step's randomness.

With `config.privacy.enabled` the run is person-level DP-SGD (gmia.gan.train_step): its steps
sample people, not photos (gmia.privacy.sampling), and its privacy plan (gmia.privacy.accounting:
epsilon, delta, noise multiplier, sampling rate, steps, clip norms, accountant, people) is made
before training, refused when over its budget, and saved in every checkpoint's metadata as
`privacy`. A resumed DP run keeps the noise multiplier it started with, so one that asks for
more steps than its target epsilon allows at that noise is refused.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from gmia import parallel, training, viz
from gmia.data import run_data
from gmia.data.pipeline import Batches
from gmia.gan import sampling, train_step
from gmia.models import stylegan
from gmia.privacy import accounting
from gmia.privacy import runs as privacy_runs

KIND = "gan"
SAMPLES_DIR = "samples"


def default_config() -> ml_collections.ConfigDict:
  """NVIDIA's StyleGAN2 defaults (stylegan2-ada-pytorch train.py); configs override fields."""
  config = training.default_config(evaluated=False)
  config.data = run_data.default_config()  # data.resolution is the image size of G and D.
  config.train_group = "members"  # Whose training photos: "members", or "shadow" for a control.
  config.mirror = False          # x-flip augmentation of the real images.
  config.batch_size = 32
  config.num_steps = 10_000
  config.model = ml_collections.ConfigDict(dict(
      z_dim=512, w_dim=512,
      mapping_layers=8,          # 2 in the cifar / auto configs.
      channel_base=32768,        # fmaps * 32768; maps min(channel_base // res, channel_max).
      channel_max=512,
      fused_modconv=False,       # grouped conv for modulation: slower on CPU (bench/bench_gan.py).
      d_architecture="resnet",   # "orig" in the cifar config.
      mbstd_group_size=4,
      mbstd_num_channels=1))
  config.optimizer = ml_collections.ConfigDict(dict(
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
  config.checkpoint_every = 1000
  config.grid_size = 32          # samples in the PNG grid written at every checkpoint.
  config.privacy = accounting.default_config()
  # Clip norm of the private R1 update, whose per-person gradients are on another scale than
  # the main update's; -1: privacy.clip_norm.
  config.privacy.r1_clip_norm = -1.0
  return config


def privacy_plan(config: ml_collections.ConfigDict, workdir: str, people: int) -> dict[str, Any]:
  """The run's privacy metadata (gmia.privacy.runs.run_plan) for `people` identities: every
  step samples once and releases D's main update, and the steps with a lazy R1 update (one in
  d_reg_interval, from step 0) release again from the same sample. ValueError when over budget."""
  steps = config.num_steps
  r1_steps = -(-steps // config.loss.d_reg_interval) if train_step.private_r1(config) else 0
  plan = privacy_runs.run_plan(config.privacy, workdir, people=people, steps=steps,
                               r1_steps=r1_steps)
  plan["r1_clip_norm"] = float(train_step.r1_clip_norm(config))
  return plan


def make_task(config: ml_collections.ConfigDict, workdir: str) -> training.Task:
  """The GAN's task: members' (or shadow identities') photos, G and D, NVIDIA's step, and a
  grid of EMA samples on latents(config.seed) at every checkpoint (workdir/samples/)."""
  stylegan.check_resolution(config.data.resolution)
  if config.train_group not in ("members", "shadow"):
    raise ValueError(f"train_group must be 'members' (the target) or 'shadow' (a control or "
                     f"reference generator), got {config.train_group!r}")
  arrays, split = run_data.load_for_run(config.data, workdir)
  train_photos = split.train_photos(config.train_group)
  if not len(train_photos):
    raise ValueError(f"the identity split has no identities in group {config.train_group!r} "
                     "with training photos: the generator has nobody to learn")
  models = train_step.build_models(config)
  mesh = parallel.make_mesh()
  meta = {"split": split.to_json()}
  photos = arrays.select(train_photos)
  if config.privacy.enabled:
    meta["privacy"] = privacy_plan(config, workdir, len(np.unique(photos.identity)))
    logging.info("privacy plan: %s", meta["privacy"])
    batches = privacy_runs.person_batches(config, photos, mesh.size)
    gan_step = train_step.make_train_step(config, models, mesh,
                                          meta["privacy"]["noise_multiplier"])
    step_fn = lambda state, batch, _: gan_step(state, batch)
  else:
    batches = Batches(photos.images, global_batch_size=config.batch_size, seed=config.seed,
                      mirror=config.mirror)
    gan_step = train_step.make_train_step(config, models, mesh)
    step_fn = lambda state, batch, _: gan_step(state, batch["images"])
  sample = sampling.make_sampler(models.generator)
  grid_z = sampling.latents(config.seed, config.grid_size, config.model.z_dim)

  def save_grid(step: int, state: train_step.State) -> None:
    images = sample({"params": state["g_ema"], "buffers": state["g_buffers"]}, grid_z,
                    jax.random.key(0))
    viz.save_grid(os.path.join(workdir, SAMPLES_DIR, f"step_{step:07d}.png"),
                  parallel.to_host(images), ncols=min(8, config.grid_size))

  return training.Task(
      kind=KIND, init=lambda _: train_step.init_state(config, models),
      phases=[training.Phase("train", config.num_steps, step_fn, batches.at)],
      meta=meta, on_checkpoint=save_grid, resumable=frozenset({"num_steps", "grid_size"}),
      items_per_step=config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) a StyleGAN2 in `workdir`: checkpoints/ (Orbax: state + meta {kind,
  config, split, and privacy for a DP run}), split.json, samples/step_XXXXXXX.png,
  tensorboard/. The result's train_metrics are the last logged step's."""
  return training.run(lambda: make_task(config, workdir), config, workdir)
