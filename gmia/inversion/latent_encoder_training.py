"""Trains a feed-forward latent encoder on a generator's own samples: zero-shot, no photos.

Every step draws fresh latents z ~ N(0, I), maps them to w and renders x = G(w); the encoder E
learns x -> w with two terms: the squared error of E(x) against the true w, in units of the
per-dimension spread of w (predicting w_avg scores 1), and the pixel reconstruction error
||G(E(x)) - x||^2 (the generator's noise inputs the same draw in both renderings, so the true w
reconstructs x exactly). Only the encoder trains; the generator is fixed. The latents are
untruncated, as the projector's w_avg start is.

The batch of step s is a function of (seed, s) alone, so a run killed and resumed from its
checkpoint (by the gmia training loop, and only with the same generator: its fingerprint is
checked) reproduces the uninterrupted one. The encoder then starts the gradient-based projection
(gmia.inversion.latent) near the answer instead of at w_avg.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from gmia import parallel, sources, training
from gmia.runs import load_run
from gmia.models import stylegan
from gmia.models import latent_encoder
from gmia.models.latent_encoder import LatentEncoder, check_matches_generator
from gmia.models.latent_encoder import with_latent_statistics

KIND = "latent_encoder"
TRAIN_NOISE_MODES = ("random", "const", "none")


def default_config() -> ml_collections.ConfigDict:
  """Every option of the latent encoder trainer; train/configs/latent_encoder_*.py start here."""
  config = training.default_config()
  config.update({
      "generator": "",             # The StyleGAN2 to invert (required): gmia:WORKDIR or
                                   # stylegan2_pkl:FILE (gmia.sources).
      "class_idx": -1,             # A conditional stylegan2_pkl generator's class.
      "batch_size": 32,
      "num_steps": 10_000,
      "model": {"w_plus": False, "channel_base": 1024, "channel_max": 128, "hidden": 256},
      "loss": {
          "w_weight": 1.0,         # Squared w error in units of the spread of w.
          "image_weight": 1.0,     # Pixel error of G(E(x)) against x; 0 skips the rendering.
          "noise_mode": "random",  # Generator noise of the training images (one draw for both).
      },
      "optimizer": {"learning_rate": 1e-3, "warmup_steps": 100},
      "statistics_samples": 10000,  # Mapped latents that estimate w_avg and the spread of w.
      "eval_samples": 256,          # Held-out generator samples measured at eval_every.
      "log_every": 50,
      "eval_every": 500,
      "checkpoint_every": 500,
  })
  return config


@functools.partial(jax.jit, static_argnums=(0, 3))
def latent_moments(generator: stylegan.Generator, g_vars: dict, key: jax.Array,
                   num_samples: int) -> tuple[jax.Array, jax.Array]:
  """(mean f32[w_dim], standard deviation f32[w_dim]) of w = mapping(z), z ~ N(0, I)."""
  z = jax.random.normal(key, (num_samples, generator.z_dim))
  w = generator.apply(g_vars, z, method=generator.map)[:, 0]
  return jnp.mean(w, axis=0), jnp.std(w, axis=0)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with linear warm-up and cosine decay to zero at num_steps (a run shorter than the
  warm-up stops within it)."""
  opt = config.optimizer
  warmup = max(opt.warmup_steps, 1)
  return optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, opt.learning_rate, warmup, max(config.num_steps, warmup + 1)))


def init_state(encoder: LatentEncoder, optimizer: optax.GradientTransformation,
               w_avg: jax.Array, w_std: jax.Array, key: jax.Array) -> dict[str, Any]:
  """Fresh training state: params, buffers (the latent statistics), opt_state, step."""
  variables = encoder.init(key, jnp.zeros((1, encoder.resolution, encoder.resolution, 3)))
  variables = with_latent_statistics(variables, w_avg, w_std)
  return {"params": variables["params"], "buffers": variables["buffers"],
          "opt_state": optimizer.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}


def encoder_variables(state: dict[str, Any]) -> dict[str, Any]:
  """The encoder's {"params", "buffers"} in a training state."""
  return {"params": state["params"], "buffers": state["buffers"]}


def _render(generator: stylegan.Generator, g_vars: dict, w: jax.Array, noise_mode: str,
            key: jax.Array) -> jax.Array:
  """G at w f32[B, w_dim] or ws f32[B, num_ws, w_dim] -> f32[B, R, R, 3]."""
  if w.ndim == 2:
    w = jnp.broadcast_to(w[:, None], (w.shape[0], stylegan.num_ws(generator.img_resolution),
                                      w.shape[1]))
  return generator.apply(g_vars, w, noise_mode, method=generator.synthesize, rngs={"noise": key})


def w_error(w: jax.Array, w_true: jax.Array, w_std: jax.Array) -> jax.Array:
  """Mean squared error of w f32[B, w_dim] (or W+ f32[B, num_ws, w_dim]) against the true
  w_true f32[B, w_dim], in units of the per-dimension spread w_std f32[w_dim]."""
  if w.ndim == 3:
    w_true = w_true[:, None]
  return jnp.mean(jnp.square((w - w_true) / w_std))


def reconstruction_mse(generator: stylegan.Generator, g_vars: dict, w: jax.Array,
                       images: jax.Array, noise_mode: str, key: jax.Array) -> jax.Array:
  """Pixel MSE of G(w) against images f32[B, R, R, 3], with the noise draw of `key`."""
  return jnp.mean(jnp.square(_render(generator, g_vars, w, noise_mode, key) - images))


def losses(encoder: LatentEncoder, e_vars: dict, generator: stylegan.Generator, g_vars: dict,
           z: jax.Array, loss_config: ml_collections.ConfigDict,
           key: jax.Array) -> dict[str, jax.Array]:
  """Terms of the objective on latents z f32[B, z_dim]: {"w_error": mean squared w error over
  the spread of w (1 at w_avg), "image_mse": pixel MSE of G(E(x)) (0 when image_weight is 0),
  "loss": their weighted sum}."""
  w_true = jax.lax.stop_gradient(generator.apply(g_vars, z, method=generator.map)[:, 0])
  images = jax.lax.stop_gradient(_render(generator, g_vars, w_true, loss_config.noise_mode, key))
  w_pred = encoder.apply(e_vars, images)
  error = w_error(w_pred, w_true, e_vars["buffers"]["w_std"])
  image_mse = jnp.float32(0.0)
  if loss_config.image_weight > 0:
    image_mse = reconstruction_mse(generator, g_vars, w_pred, images, loss_config.noise_mode, key)
  return {"w_error": error, "image_mse": image_mse,
          "loss": loss_config.w_weight * error + loss_config.image_weight * image_mse}


def make_train_step(config: ml_collections.ConfigDict, encoder: LatentEncoder,
                    generator: stylegan.Generator,
                    mesh: Mesh) -> Callable[[dict, dict], tuple[dict, dict]]:
  """`step(state, g_vars) -> (state, metrics)`, to be jitted: one Adam step on a fresh batch of
  batch_size generator samples, drawn from (seed, state["step"]) and split over the mesh."""
  optimizer = make_optimizer(config)
  data = parallel.data_sharding(mesh)
  base = jax.random.fold_in(jax.random.key(config.seed), 0)

  def step(state, g_vars):
    z_key, noise_key = jax.random.split(jax.random.fold_in(base, state["step"]))
    z = jax.lax.with_sharding_constraint(
        jax.random.normal(z_key, (config.batch_size, generator.z_dim)), data)

    def loss_fn(params):
      terms = losses(encoder, {"params": params, "buffers": state["buffers"]}, generator,
                     g_vars, z, config.loss, noise_key)
      return terms["loss"], terms

    grads, terms = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, params=optax.apply_updates(state["params"], updates),
                     opt_state=opt_state, step=state["step"] + 1)
    return new_state, {**terms, "grad_norm": optax.tree.norm(grads)}

  return step


@functools.partial(jax.jit, static_argnums=(0, 2))
def evaluate(encoder: LatentEncoder, e_vars: dict, generator: stylegan.Generator, g_vars: dict,
             z: jax.Array) -> dict[str, jax.Array]:
  """Held-out quality on x = G(mapping(z)) with the generator's constant noise (as the
  projector's targets): w error (spread units) and pixel MSE of G(E(x)), and of the w_avg start
  the encoder replaces (`*_w_avg`)."""
  w_true = generator.apply(g_vars, z, method=generator.map)[:, 0]
  key = jax.random.key(0)  # Unused by constant noise.
  images = _render(generator, g_vars, w_true, "const", key)
  w_std = e_vars["buffers"]["w_std"]
  metrics = {}
  for name, w in (("", encoder.apply(e_vars, images)),
                  ("_w_avg", jnp.broadcast_to(e_vars["buffers"]["w_avg"], w_true.shape))):
    metrics[f"w_error{name}"] = w_error(w, w_true, w_std)
    metrics[f"image_mse{name}"] = reconstruction_mse(generator, g_vars, w, images, "const", key)
  return metrics


def eval_latents(config: ml_collections.ConfigDict, z_dim: int) -> jax.Array:
  """f32[eval_samples, z_dim]: held-out latents, from a stream the training batches never use."""
  return jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), 1),
                           (config.eval_samples, z_dim))


def _generator_meta(generator: stylegan.Generator) -> dict[str, int]:
  """What a latent encoder checkpoint records of the generator it inverts."""
  return {"img_resolution": generator.img_resolution, "w_dim": generator.w_dim,
          "z_dim": generator.z_dim}


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.loss.noise_mode not in TRAIN_NOISE_MODES:
    raise ValueError(f"loss.noise_mode must be one of {TRAIN_NOISE_MODES}, got "
                     f"{config.loss.noise_mode!r}")
  if min(config.loss.w_weight, config.loss.image_weight) < 0 or not (
      config.loss.w_weight or config.loss.image_weight):
    raise ValueError("loss weights must be non-negative and not both zero")
  if min(config.num_steps, config.batch_size, config.eval_samples, config.log_every,
         config.eval_every, config.checkpoint_every) < 1:
    raise ValueError("num_steps, batch_size, eval_samples and the log/eval/checkpoint intervals "
                     "must be positive")


def make_task(config: ml_collections.ConfigDict) -> training.Task:
  """The latent encoder's task: fresh generator samples every step (no photos), and held-out
  samples' w and pixel errors."""
  _check_config(config)
  source = sources.open_source(ml_collections.ConfigDict(
      {**sources.config_fields(), "generator": config.generator, "class_idx": config.class_idx}))
  sources.require(source, sources.STYLEGAN, "a latent encoder")
  generator, g_vars = source.stylegan
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  encoder = latent_encoder.from_config(config, generator.img_resolution, generator.w_dim)
  optimizer = make_optimizer(config)
  step = make_train_step(config, encoder, generator, mesh)
  eval_z = eval_latents(config, generator.z_dim)

  w_avg, w_std = latent_moments(generator, g_vars, jax.random.key(0), config.statistics_samples)
  init = lambda consts: init_state(encoder, optimizer, consts["w_avg"], consts["w_std"],
                                   jax.random.key(config.seed))

  def held_out(state):
    return {k: float(v) for k, v in evaluate(encoder, encoder_variables(state), generator, g_vars,
                                             eval_z).items()}

  return training.Task(
      kind=KIND, init=init, consts={"generator": g_vars, "w_avg": w_avg, "w_std": w_std},
      phases=[training.Phase("train", config.num_steps,
                             lambda state, _, consts: step(state, consts["generator"]))],
      meta={"generator": _generator_meta(generator)},
      inputs={"generator": source.fingerprint}, evaluate=held_out,
      resumable=frozenset({"generator", "eval_samples"}),
      items_per_step=config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) a latent encoder of config.generator's generator in `workdir`:
  checkpoints/ (state + meta {kind, config, inputs, generator}), tensorboard/ and eval.json;
  the result's metrics are the final encoder's held-out ones (see `evaluate`)."""
  return training.run(lambda: make_task(config), config, workdir)


def encoder_start(workdir: str, generator: stylegan.Generator) -> Callable[[jax.Array], jax.Array]:
  """Jitted `start(targets f32[B, R, R, 3]) -> w f32[B, w_dim] (or f32[B, num_ws, w_dim])`: the
  latent encoder in `workdir` as the projection's start (`start_ws`) for `generator`'s targets."""
  run = load_run(workdir, "latent_encoder")
  check_matches_generator(run.model, generator)
  encoder, e_vars = run.model, run.variables
  predict = jax.jit(encoder.apply)
  return lambda targets: predict(e_vars, targets)
