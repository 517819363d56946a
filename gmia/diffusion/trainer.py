"""DDPM training as a task of the gmia training loop: data, the U-Net, the step, sample grids.

`train_and_evaluate(config, workdir)` trains a denoising U-Net (gmia.models.unet) on the
training photos of `config.train_group`'s identities only (the members; the shadow identities
for a control), from the same identity split and pipeline as the GAN (gmia.gan.trainer), saving
the split next to the run. The objective is Ho et al. (2020)'s simple loss: for a photo x0,
t ~ U{0..T-1} and eps ~ N(0, I), the mean squared error between eps and the network's prediction
at x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. Adam with linear warm-up and gradient clipping,
and an EMA of the weights (what is sampled and attacked) whose decay is min(ema_decay,
(1 + step) / (10 + step)), diffusers' EMAModel's, so a short run's average is not dominated by
its initialisation.

With `config.privacy.enabled` the run is person-level DP-SGD, as the GAN's: its steps sample
people (gmia.privacy.sampling), each person's gradient is clipped and the sum noised
(gmia.privacy.clipping), and its privacy plan (gmia.privacy.runs) is made before training, refused
when over budget and saved in every checkpoint's metadata as `privacy`; everything sampled from
the weights is post-processing.

A step's batch and randomness (timesteps, noise, dropout) are functions of (seed, step), drawn
over the global batch, so a killed run resumes bit for bit and any device or process count
trains the same. Checkpoints hold plain dicts (step, params, ema, opt_state) and the config, so
a plain JAX program rebuilds the U-Net from config.model and samples it (README: "Checkpoints
without gmia").
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from gmia import parallel, training, viz
from gmia.data import run_data
from gmia.data.pipeline import Batches
from gmia.diffusion import sampling
from gmia.models import noise_schedule
from gmia.training import ema
from gmia.models import unet as unet_lib
from gmia.models.unet import UNet
from gmia.privacy import accounting, clipping
from gmia.privacy import runs as privacy_runs

KIND = "diffusion"
# fold_in data for the DP noise key of a step, apart from the split(key) of its other draws.
_NOISE_STREAM = 2**31 - 1
SAMPLES_DIR = "samples"
State = dict[str, Any]


def default_config() -> ml_collections.ConfigDict:
  """Ho et al.'s DDPM (CIFAR-10 settings: 1000 linear steps 1e-4..0.02, Adam 2e-4 with 5,000
  warm-up steps, clipping at norm 1, EMA 0.9999) with diffusers' default UNet2DModel layout at
  narrower widths; configs override fields."""
  config = training.default_config(evaluated=False)
  config.data = run_data.default_config()  # data.resolution is the image size of the U-Net.
  config.train_group = "members"  # Whose training photos: "members", or "shadow" for a control.
  config.mirror = True           # x-flip augmentation (DDPM's CIFAR-10 and CelebA-HQ runs).
  config.batch_size = 64
  config.num_steps = 100_000
  config.model = ml_collections.ConfigDict(dict(
      block_out_channels=(64, 128, 256, 256),
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      layers_per_block=2,
      attention_head_dim=8,
      norm_num_groups=32,
      flip_sin_to_cos=True,
      freq_shift=0,
      dropout=0.0,               # DDPM used 0.1 on CIFAR-10's 50,000 images.
      dtype="float32"))          # "float64" for exact comparisons in tests.
  config.schedule = ml_collections.ConfigDict(dict(
      beta_schedule="linear",    # Or "squaredcos_cap_v2" (Nichol & Dhariwal's cosine).
      num_train_timesteps=1000,
      beta_start=1e-4,
      beta_end=0.02,
      clip_sample=True))         # Samplers clip the predicted x0 to [-1, 1].
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8))
  config.ema_decay = 0.9999
  config.log_every = 100
  config.checkpoint_every = 1000
  config.grid_size = 16          # EMA samples in the PNG grid written at every checkpoint.
  config.grid_steps = 50         # DDIM steps of those samples.
  config.privacy = accounting.default_config()
  return config


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  warmup = optax.linear_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1))
  return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.adam(warmup, b1=o.b1, b2=o.b2, eps=o.eps))


def init_state(config: ml_collections.ConfigDict, unet: UNet) -> State:
  """Fresh training state from `config.seed`: step, params, ema (a copy of params), opt_state."""
  res = config.data.resolution
  params = unet.init(jax.random.fold_in(jax.random.key(config.seed), 1),
                     jnp.zeros((1, res, res, 3)), jnp.zeros((1,), jnp.int32))["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params,
          "opt_state": make_optimizer(config).init(params)}


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
  """min(decay, (1 + step) / (10 + step)): diffusers' EMAModel without its power warm-up."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1 + step) / (10 + step))


def diffuse(abar: jax.Array, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for photos x0 [N, R, R, 3] at timesteps t [N]."""
  a = abar[t].astype(x0.dtype)[:, None, None, None]
  return jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise


def make_train_step(config: ml_collections.ConfigDict, unet: UNet, mesh: jax.sharding.Mesh,
                    noise_multiplier: float | None = None):
  """`train_step(state, images) -> (state, metrics)`, to be jitted (the loop does).

  images: f32[batch_size, R, R, 3] in [-1, 1], sharded over `data`. Timesteps, noise and
  dropout come from fold_in(key(seed), step), drawn for the global batch.

  With config.privacy.enabled the step is person-level DP-SGD: `images` is the step's people
  (gmia.privacy.sampling), {"images": f32[S, K, R, R, 3], "mask": f32[S, K]} sharded over
  `data`, the timesteps and noise are drawn for its S * K photo places as for a batch of that
  size, each person's gradient of their photos' loss (summed, / K) is clipped, and the sum gets
  Gaussian noise of `noise_multiplier` (the run's privacy plan; gmia.privacy.clipping). Its
  metrics are the noisy gradient's norm and the EMA decay: the loss reads the photos.
  """
  private = config.privacy.enabled
  if private and (noise_multiplier is None or noise_multiplier < 0):
    raise ValueError(f"a private step needs a non-negative noise multiplier (from "
                     f"gmia.privacy.accounting.plan), got {noise_multiplier}")
  if not private:
    parallel.check_divisible(config.batch_size, mesh)
  abar = jnp.asarray(noise_schedule.from_config(config.schedule).alphas_cumprod)
  num_timesteps = config.schedule.num_train_timesteps
  max_photos = config.privacy.max_photos_per_person
  tx = make_optimizer(config)
  data = parallel.data_sharding(mesh)

  def draws(k_t: jax.Array, k_noise: jax.Array, shape: tuple[int, ...], dtype
            ) -> tuple[jax.Array, jax.Array]:
    """Timesteps i32[N] and noise [*shape] for N = shape[0] photos, sharded over `data`."""
    t = jax.random.randint(k_t, shape[:1], 0, num_timesteps)
    noise = jax.random.normal(k_noise, shape, dtype)
    return (jax.lax.with_sharding_constraint(t, data),
            jax.lax.with_sharding_constraint(noise, data))

  def squared_errors(params, x0, t, noise, dropout_key):
    """The simple loss's terms: the squared error of the predicted noise, [N, R, R, 3]."""
    predicted = unet.apply({"params": params}, diffuse(abar, x0, t, noise), t, train=True,
                           rngs={"dropout": dropout_key})
    return jnp.square(predicted - noise)

  def update(state: State, grads) -> tuple[State, jax.Array]:
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay(state["step"], config.ema_decay)
    dtype = jax.tree.leaves(params)[0].dtype
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
            "ema": ema.ema_update(state["ema"], params, decay.astype(dtype))}, decay

  def train_step(state: State, images: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    k_t, k_noise, k_dropout = jax.random.split(key, 3)
    x0 = images.astype(unet.dtype)
    t, noise = draws(k_t, k_noise, x0.shape, x0.dtype)
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(squared_errors(p, x0, t, noise, k_dropout)))(state["params"])
    new_state, decay = update(state, grads)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "ema_decay": decay}

  def person_loss(params, images, mask, t, noise, dropout_key_data):
    """One person's part of the loss: their photos' (mask [K] of the real ones) summed, / K.
    Summed over P people of K photos and divided by P, it is the mean over P * K photos."""
    errors = squared_errors(params, images, t, noise, jax.random.wrap_key_data(dropout_key_data))
    return jnp.sum(mask * jnp.mean(errors, axis=(1, 2, 3))) / max_photos

  def private_train_step(state: State, people: dict) -> tuple[State, dict[str, jax.Array]]:
    key = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    k_t, k_noise, k_dropout = jax.random.split(key, 3)
    images = people["images"].astype(unet.dtype)
    slots, photos = people["mask"].shape
    flat = images.reshape(slots * photos, *images.shape[2:])
    t, noise = draws(k_t, k_noise, flat.shape, flat.dtype)
    rows = (images, people["mask"].astype(unet.dtype), t.reshape(slots, photos),
            noise.reshape(images.shape),
            jax.random.key_data(jax.random.split(k_dropout, slots)))
    grads = clipping.noisy_mean_gradient(
        person_loss, state["params"], rows, mesh=mesh, clip_norm=config.privacy.clip_norm,
        noise_multiplier=noise_multiplier, people_per_step=config.privacy.people_per_step,
        key=jax.random.fold_in(key, _NOISE_STREAM))
    new_state, decay = update(state, grads)
    return new_state, {"noisy_grad_norm": optax.tree.norm(grads), "ema_decay": decay}

  return private_train_step if private else train_step


def make_task(config: ml_collections.ConfigDict, workdir: str) -> training.Task:
  """The DDPM's task: members' (or shadow identities') photos, the U-Net, the simple loss, and
  a grid of EMA samples (DDIM, config.grid_steps steps, samples 0.. of config.seed) at every
  checkpoint (workdir/samples/)."""
  if config.train_group not in ("members", "shadow"):
    raise ValueError(f"train_group must be 'members' (the target) or 'shadow' (a control or "
                     f"reference generator), got {config.train_group!r}")
  unet = unet_lib.from_config(config)
  arrays, split = run_data.load_for_run(config.data, workdir)
  train_photos = split.train_photos(config.train_group)
  if not len(train_photos):
    raise ValueError(f"the identity split has no identities in group {config.train_group!r} "
                     "with training photos: the model has nobody to learn")
  mesh = parallel.make_mesh()
  photos = arrays.select(train_photos)
  meta = {"split": split.to_json()}
  if config.privacy.enabled:
    meta["privacy"] = privacy_runs.run_plan(config.privacy, workdir,
                                            people=len(np.unique(photos.identity)),
                                            steps=config.num_steps)
    logging.info("privacy plan: %s", meta["privacy"])
    batches = privacy_runs.person_batches(config, photos, mesh.size)
    train_step = make_train_step(config, unet, mesh, meta["privacy"]["noise_multiplier"])
    step_fn = lambda state, batch, _: train_step(state, batch)
  else:
    batches = Batches(photos.images, global_batch_size=config.batch_size, seed=config.seed,
                      mirror=config.mirror)
    train_step = make_train_step(config, unet, mesh)
    step_fn = lambda state, batch, _: train_step(state, batch["images"])
  generate = sampling.make_generate(
      unet, noise_schedule.from_config(config.schedule), sampler="ddim",
      num_steps=config.grid_steps, resolution=config.data.resolution)

  def save_grid(step: int, state: State) -> None:
    images = parallel.map_padded(
        functools.partial(generate, {"params": state["ema"]}, seed=np.int32(config.seed)),
        np.arange(config.grid_size), mesh)
    viz.save_grid(os.path.join(workdir, SAMPLES_DIR, f"step_{step:07d}.png"),
                  parallel.to_host(images).astype(np.float32), ncols=min(8, config.grid_size))

  return training.Task(
      kind=KIND, init=lambda _: init_state(config, unet),
      phases=[training.Phase("train", config.num_steps, step_fn, batches.at)],
      meta=meta, on_checkpoint=save_grid,
      resumable=frozenset({"num_steps", "grid_size", "grid_steps"}),
      items_per_step=config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) a DDPM in `workdir`: checkpoints/ (Orbax: state + meta {kind, config,
  split}), split.json, samples/step_XXXXXXX.png, tensorboard/. The result's train_metrics are
  the last logged step's."""
  return training.run(lambda: make_task(config, workdir), config, workdir)
