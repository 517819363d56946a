"""Projection of target photos into a StyleGAN2 generator's latent space.

The mathematics of NVIDIA's stylegan2-ada-pytorch `projector.py`: start from w_avg, Adam whose
learning rate ramps up over the first 5% of steps and down (cosine) over the last 25%, Gaussian
noise added to w whose scale (a fraction of the spread of w) decays to zero over the first 75%,
and the per-layer noise maps optimised too (noise_mode "const"), held at zero mean and unit
variance and kept free of spatial structure by an autocorrelation penalty at every scale. W
optimises one w shared by all layers; W+ one w per layer. Instead of w_avg, each target may start
from a given w, such as a feed-forward latent encoder's guess (gmia.models.latent_encoder): with
the noise on w off (initial_noise_factor=0), which would shake it out of its good basin, that
start reaches a given error in fewer steps (bench/bench_latent_encoder.py).

No LPIPS weights exist offline, so the perceptual distance is the feature distance at chosen
layers of the identity encoder; the identity loss is 1 - cosine of its embeddings.

Two optimisers: "adam", NVIDIA's schedule above, or "lbfgs", quasi-Newton (gmia.inversion.lbfgs)
on the deterministic loss: no noise on w, the noise maps optimised through their normalisation
(the loss sees normalize_noise(maps), the constraint Adam keeps by renormalising after each step),
every target stopping on its own when its loss no longer falls. GAN-Leaks' white-box attack
runs scipy's L-BFGS-B instead (bench/bench_gan_leaks.py: W, no noise, 20 targets at 32 px, at
most 1000 evaluations each, 2 shared CPU cores, L-BFGS's defaults chosen on a random generator's
samples). On the trained demo generator's member photos, "lbfgs" projected 3.1 targets/s against
L-BFGS-B's 0.24 (one target at a time) and 1.35 (GAN-Leaks' batches of 20), at a median residual
||G(w) - x|| of 5.19 against 5.25 and 5.59 (Adam: 0.29 targets/s, 5.50). Each target ends in
its own basin: lower than one-target L-BFGS-B's on 45% of them, and 20 curvature pairs instead
of 30 gave a median of 5.40.
On the random generator's own samples: 2.9 against 0.38 and 0.19 targets/s, median residual
0.0001 against 0.0091 and 0.0002.

Every step is one jitted call, vmapped over targets and driven from Python
(gmia.inversion.stepping): every target is optimised independently, so a batch gives the results
of one target at a time, and a batch sharded over a mesh gives the results of one device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from gmia.inversion import lbfgs, priors, stepping
from gmia.models import iresnet, stylegan
from gmia.models.preprocessing import preprocess

PROJECTION_NOISE_MODES = ("const", "none")
PROJECTION_OPTIMIZERS = ("adam", "lbfgs")


@dataclasses.dataclass(frozen=True)
class ProjectionSettings:
  """Hyperparameters of the projection (defaults: NVIDIA's projector, LPIPS replaced).

  optimizer: "adam" (NVIDIA's schedule) or "lbfgs" (quasi-Newton, each target stopping on its
    own). num_steps: Adam's steps, or L-BFGS's most loss-and-gradient evaluations per target.
  w_plus: one w per synthesis layer (W+) instead of one w for all (W).
  noise_mode: "const" optimises the noise maps; "none" runs the generator without noise.
  initial_learning_rate, lr_rampup_length, lr_rampdown_length (fractions of num_steps),
  initial_noise_factor (the scale of the noise added to w at step 0, in units of the spread of
    w), noise_ramp_length: Adam's schedule. L-BFGS's line search needs a deterministic loss, so
    it adds no noise to w.
  lbfgs_memory: curvature pairs L-BFGS keeps per target. On bench/bench_gan_leaks.py's random
    targets (2 shared CPU cores) 30 took a median 178 evaluations, 20 took 204 and 10 took 230;
    30 ran at 2.7-2.8 targets/s where 20 ran at 2.1-2.5 beside it.
  lbfgs_batch: targets L-BFGS optimises at once; the others wait for a place. Targets stop after
    different numbers of evaluations (there a median of 200, up to 300): a batch of all of them
    computes finished ones until the last stops, one at a time gives up vectorisation. Batches
    of 1, 4, 6, 8, 12 and 20 of those 20 targets ran at 2.4, 2.7, 3.0, 2.8-3.1, 2.8 and 1.7
    targets/s (20 pairs).
  lbfgs_ftol, lbfgs_window: L-BFGS stops a target once its last lbfgs_window evaluations
    lowered its loss by at most a fraction lbfgs_ftol. On those targets 1e-3 left a higher mean
    residual than 1e-4, and 1e-5 or a window of 20 ran 15-18% slower at the same median.
  regularize_noise_weight: weight of the noise maps' autocorrelation penalty.
  w_avg_samples: mapping-network samples that estimate w_avg and the spread of w.
  pixel_weight, perceptual_weight, identity_weight: weights of the distances to the target
    (mean squared pixel error; encoder feature distance at perceptual_layers; 1 - cosine of
    encoder embeddings). The last two need an encoder.
  """
  num_steps: int = 1000
  optimizer: str = "adam"
  w_plus: bool = False
  noise_mode: str = "const"
  initial_learning_rate: float = 0.1
  lr_rampup_length: float = 0.05
  lr_rampdown_length: float = 0.25
  initial_noise_factor: float = 0.05
  noise_ramp_length: float = 0.75
  regularize_noise_weight: float = 1e5
  w_avg_samples: int = 10000
  pixel_weight: float = 1.0
  perceptual_weight: float = 0.0
  perceptual_layers: tuple[str, ...] = ("stage1", "stage2")
  identity_weight: float = 0.0
  lbfgs_memory: int = 30
  lbfgs_batch: int = 8
  lbfgs_ftol: float = 1e-4
  lbfgs_window: int = 10

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be positive, got {self.num_steps}")
    if self.optimizer not in PROJECTION_OPTIMIZERS:
      raise ValueError(f"projection optimizer must be one of {PROJECTION_OPTIMIZERS}, got "
                       f"{self.optimizer!r}")
    if self.optimizer == "lbfgs":
      self.lbfgs_options()  # Its own checks.
      if self.lbfgs_batch < 1:
        raise ValueError(f"lbfgs_batch must be positive, got {self.lbfgs_batch}")
    if self.noise_mode not in PROJECTION_NOISE_MODES:
      raise ValueError(f"projection noise_mode must be one of {PROJECTION_NOISE_MODES} (random "
                       f"noise would change the target every step), got {self.noise_mode!r}")
    unknown = [name for name in self.perceptual_layers if name not in iresnet.LAYERS]
    if unknown:
      raise ValueError(f"unknown perceptual layer(s) {unknown}; choose from {iresnet.LAYERS}")
    if min(self.pixel_weight, self.perceptual_weight, self.identity_weight) < 0:
      raise ValueError("loss weights must be non-negative")

  @property
  def uses_encoder(self) -> bool:
    return self.perceptual_weight > 0 or self.identity_weight > 0

  def lbfgs_options(self) -> lbfgs.Options:
    return lbfgs.Options(max_evaluations=self.num_steps, memory=self.lbfgs_memory,
                         ftol=self.lbfgs_ftol, window=self.lbfgs_window, gtol=0.0)


def learning_rate_ramp(step: jax.Array, num_steps: int, rampup: float,
                       rampdown: float) -> jax.Array:
  """Multiplier of the initial learning rate at `step`: linear ramp-up over the first `rampup`
  fraction of the run, cosine ramp-down over the last `rampdown` fraction."""
  t = step / num_steps
  down = 0.5 - 0.5 * jnp.cos(jnp.minimum(1.0, (1.0 - t) / rampdown) * jnp.pi)
  return down * jnp.minimum(1.0, t / rampup)


def w_noise_scale(step: jax.Array, num_steps: int, w_std: jax.Array, initial_factor: float,
                  ramp_length: float) -> jax.Array:
  """Standard deviation of the noise added to w at `step`: quadratic decay to 0 at ramp_length."""
  t = step / num_steps
  return w_std * initial_factor * jnp.square(jnp.maximum(0.0, 1.0 - t / ramp_length))


def noise_regularization(noise_maps: Sequence[jax.Array]) -> jax.Array:
  """Sum over maps f32[R, R] and their 2x average-pooled versions down to 8x8 of the squared
  mean products of the map with itself shifted by one pixel (wrapping) down and right."""
  total = jnp.float32(0.0)
  for noise in noise_maps:
    while True:
      total += jnp.square(jnp.mean(noise * jnp.roll(noise, 1, axis=1)))
      total += jnp.square(jnp.mean(noise * jnp.roll(noise, 1, axis=0)))
      if noise.shape[0] <= 8:
        break
      r = noise.shape[0] // 2
      noise = noise.reshape(r, 2, r, 2).mean(axis=(1, 3))
  return total


def normalize_noise(noise: jax.Array) -> jax.Array:
  """Zero mean, unit mean square."""
  noise = noise - jnp.mean(noise)
  return noise * jax.lax.rsqrt(jnp.mean(jnp.square(noise)))


def latent_statistics(generator: stylegan.Generator, g_vars: dict, key: jax.Array,
                      num_samples: int) -> tuple[jax.Array, jax.Array]:
  """(w_avg f32[w_dim], w_std f32[]) over mapped z ~ N(0, I): the start of the projection and
  the spread of w, sqrt(E||w - w_avg||^2), that scales the added noise."""
  z = jax.random.normal(key, (num_samples, generator.z_dim))
  w = generator.apply(g_vars, z, method=generator.map)[:, 0]
  w_avg = jnp.mean(w, axis=0)
  return w_avg, jnp.sqrt(jnp.sum(jnp.square(w - w_avg)) / num_samples)


def _noise_maps(g_vars: dict) -> dict:
  """The synthesis network's noise buffers {"b8": {"conv0": {"noise_const": f32[8, 8]}}, ...}."""
  return g_vars["buffers"]["synthesis"]


def make_projector(generator: stylegan.Generator, settings: ProjectionSettings,
                   encoder: iresnet.IResNet | None = None) -> Callable[..., dict[str, jax.Array]]:
  """Jitted `project(g_vars, encoder_vars, targets, keys) -> results`.

  g_vars: {"params", "buffers"} of `generator`; encoder_vars: variables of `encoder` (None when
  the settings use no encoder); targets: f32[B, R, R, 3] in [-1, 1] at the generator's
  resolution; keys: one PRNG key per target, key[B] (a target's result depends only on itself
  and its key).
  start_ws (optional): where each target's optimisation starts instead of w_avg, f32[B, w_dim]
  (W or W+), or f32[B, num_ws, w_dim] (W+ only), e.g. a latent encoder's prediction.
  Returns {"ws": f32[B, num_ws, w_dim], "noise": noise maps with a leading B axis,
  "images": f32[B, R, R, 3] (G at the result), "pixel_mse": f32[B] of those images,
  "start_mse": f32[B] of G at the start with the initial noise maps, "loss": f32[B, num_steps]
  (Adam: at each step; L-BFGS: at the best point after each evaluation, then its last value),
  "evaluations": i32[B] loss-and-gradient evaluations spent on each target}.
  """
  if settings.uses_encoder and encoder is None:
    raise ValueError("perceptual or identity loss needs an encoder")
  # Each target's synthesis runs on a batch of one under vmap; the fused (grouped-conv) form
  # would turn the vmapped axis into conv groups, which compile slowly and which XLA's SPMD
  # partitioner rejects on a sharded batch. The unfused form computes the same function.
  generator = generator.clone(fused_modconv=False)
  resolution = generator.img_resolution
  layers = stylegan.num_ws(resolution)
  captured = tuple(settings.perceptual_layers if settings.perceptual_weight > 0 else ()) + (
      ("embedding",) if settings.identity_weight > 0 else ())
  lbfgs_options = settings.lbfgs_options() if settings.optimizer == "lbfgs" else None
  tx = optax.chain(
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
      optax.scale_by_schedule(lambda count: -settings.initial_learning_rate * learning_rate_ramp(
          count, settings.num_steps, settings.lr_rampup_length, settings.lr_rampdown_length)))

  def synthesize(g_vars, w, noise):
    ws = jnp.broadcast_to(w, (layers, w.shape[-1]))
    buffers = dict(g_vars["buffers"], synthesis=noise) if noise else g_vars["buffers"]
    return generator.apply({"params": g_vars["params"], "buffers": buffers}, ws[None],
                           settings.noise_mode, method=generator.synthesize)[0]

  def encode(encoder_vars, image):
    x = preprocess(image[None], iresnet.input_size(encoder, encoder_vars))
    return encoder.apply(encoder_vars, x, train=False, capture=captured)

  def distance(encoder_vars, image, target, target_features):
    terms = {"pixel": jnp.mean(jnp.square(image - target))}
    if captured:
      features = encode(encoder_vars, image)
      if settings.perceptual_weight > 0:
        terms["perceptual"] = sum(
            priors.feature_distance(features[name], target_features[name])[0]
            for name in settings.perceptual_layers) / len(settings.perceptual_layers)
      if settings.identity_weight > 0:
        a, b = features["embedding"][0], target_features["embedding"][0]
        terms["identity"] = 1.0 - jnp.dot(a, b) * jax.lax.rsqrt(
            jnp.maximum(jnp.sum(a * a) * jnp.sum(b * b), 1e-24))
    return (settings.pixel_weight * terms["pixel"]
            + settings.perceptual_weight * terms.get("perceptual", 0.0)
            + settings.identity_weight * terms.get("identity", 0.0))

  def loss_fn(g_vars, encoder_vars, params, w_noise, target, target_features):
    image = synthesize(g_vars, params["w"] + w_noise, params["noise"])
    loss = distance(encoder_vars, image, target, target_features)
    if settings.noise_mode == "const":
      loss += settings.regularize_noise_weight * noise_regularization(
          jax.tree.leaves(params["noise"]))
    return loss

  def start_one(g_vars, encoder_vars, w_start, target, key):
    """One target's optimisation before its first step; w_start: f32[1 (W) or num_ws, w_dim]."""
    init_key, step_key = jax.random.split(key)
    noise = {}
    if settings.noise_mode == "const":
      maps, treedef = jax.tree.flatten(_noise_maps(g_vars))
      noise = jax.tree.unflatten(treedef, [
          jax.random.normal(jax.random.fold_in(init_key, i), m.shape) for i, m in enumerate(maps)])
    params = {"w": w_start, "noise": noise}
    start = synthesize(g_vars, params["w"], params["noise"])
    opt_state = (lbfgs.init(jax.flatten_util.ravel_pytree(params)[0], lbfgs_options)
                 if lbfgs_options else tx.init(params))
    return {"params": params, "opt_state": opt_state, "step_key": step_key,
            "target": target,
            "target_features": encode(encoder_vars, target) if captured else None,
            "start_mse": jnp.mean(jnp.square(start - target))}

  def step_one(g_vars, encoder_vars, w_std, run, index):
    params = run["params"]
    scale = w_noise_scale(index, settings.num_steps, w_std, settings.initial_noise_factor,
                          settings.noise_ramp_length)
    w_noise = scale * jax.random.normal(jax.random.fold_in(run["step_key"], index),
                                        params["w"].shape)
    loss, grads = jax.value_and_grad(loss_fn, argnums=2)(
        g_vars, encoder_vars, params, w_noise, run["target"], run["target_features"])
    updates, opt_state = tx.update(grads, run["opt_state"], params)
    params = optax.apply_updates(params, updates)
    params = dict(params, noise=jax.tree.map(normalize_noise, params["noise"]))
    return dict(run, params=params, opt_state=opt_state), loss

  def constrained(params):
    """L-BFGS's parameters as the generator takes them: the noise maps normalised."""
    return dict(params, noise=jax.tree.map(normalize_noise, params["noise"]))

  def search_one(g_vars, encoder_vars, run):
    """One loss-and-gradient evaluation of L-BFGS at the target's trial point."""
    _, unravel = jax.flatten_util.ravel_pytree(run["params"])
    loss = lambda flat: loss_fn(g_vars, encoder_vars, constrained(unravel(flat)), 0.0,
                                run["target"], run["target_features"])
    state = run["opt_state"]
    state = lbfgs.update(state, *jax.value_and_grad(loss)(lbfgs.trial(state)), lbfgs_options)
    return dict(run, params=unravel(state.x), opt_state=state), lbfgs.done(state)

  def finish_one(g_vars, run):
    params = constrained(run["params"]) if lbfgs_options else run["params"]
    image = synthesize(g_vars, params["w"], params["noise"])
    return {"ws": jnp.broadcast_to(params["w"], (layers, params["w"].shape[-1])),
            "noise": params["noise"], "images": image,
            "pixel_mse": jnp.mean(jnp.square(image - run["target"])),
            "start_mse": run["start_mse"]}

  optimised_ws = layers if settings.w_plus else 1

  @jax.jit
  def begin(g_vars, encoder_vars, targets, keys, start_ws):
    w_avg, w_std = latent_statistics(generator, g_vars, jax.random.key(0),
                                     settings.w_avg_samples)
    if start_ws is None:
      start_ws = w_avg[None]
    if start_ws.ndim == 2:
      start_ws = start_ws[:, None]
    starts = jnp.broadcast_to(start_ws, (targets.shape[0], optimised_ws, w_avg.shape[0]))
    return jax.vmap(start_one, in_axes=(None, None, 0, 0, 0))(
        g_vars, encoder_vars, starts, targets, keys), w_std

  @functools.partial(jax.jit, donate_argnums=3)
  def advance(g_vars, encoder_vars, w_std, runs, index):
    return jax.vmap(step_one, in_axes=(None, None, None, 0, None))(
        g_vars, encoder_vars, w_std, runs, index)

  @functools.partial(jax.jit, donate_argnums=2)
  def search(g_vars, encoder_vars, runs):
    return jax.vmap(search_one, in_axes=(None, None, 0))(g_vars, encoder_vars, runs)

  finish = jax.jit(jax.vmap(finish_one, in_axes=(None, 0)))

  def project(g_vars, encoder_vars, targets, keys, start_ws):
    runs, w_std = begin(g_vars, encoder_vars, targets, keys, start_ws)
    if lbfgs_options:
      runs = stepping.run_until_done(lambda runs: search(g_vars, encoder_vars, runs), runs,
                                     settings.num_steps, max_batch=settings.lbfgs_batch)
      return dict(finish(g_vars, runs), loss=runs["opt_state"].history,
                  evaluations=runs["opt_state"].evaluations)
    runs, losses = stepping.run_steps(
        lambda runs, index: advance(g_vars, encoder_vars, w_std, runs, index), runs,
        settings.num_steps, targets.shape[0])
    return dict(finish(g_vars, runs), loss=losses,
                evaluations=jnp.full(targets.shape[:1], settings.num_steps, jnp.int32))

  def checked(g_vars: dict, encoder_vars: dict | None, targets: jax.Array, keys: jax.Array,
              start_ws: jax.Array | None = None) -> dict[str, jax.Array]:
    expected = (resolution, resolution, generator.img_channels)
    if targets.ndim != 4 or tuple(targets.shape[1:]) != expected:
      raise ValueError(f"targets must be f32[B, {', '.join(map(str, expected))}] at the "
                       f"generator's resolution, got shape {targets.shape}")
    if keys.shape != targets.shape[:1]:
      raise ValueError(f"need one key per target: keys {keys.shape}, targets {targets.shape[:1]}")
    if settings.uses_encoder and encoder_vars is None:
      raise ValueError("perceptual or identity loss needs the encoder's variables")
    if start_ws is not None:
      check_start_ws(start_ws, targets.shape[0], generator.w_dim, optimised_ws)
    return project(g_vars, encoder_vars if settings.uses_encoder else None, targets, keys,
                   start_ws)

  return checked


def check_start_ws(start_ws: jax.Array, num_targets: int, w_dim: int,
                   optimised_ws: int) -> None:
  """Raises ValueError unless start_ws is f32[num_targets, w_dim], or f32[num_targets,
  optimised_ws, w_dim] (optimised_ws: num_ws in W+, 1 in W), finite."""
  shape = tuple(start_ws.shape)
  allowed = [(num_targets, w_dim)] + ([(num_targets, optimised_ws, w_dim)]
                                      if optimised_ws > 1 else [])
  if shape not in allowed:
    raise ValueError(f"start_ws must be one start per target, f32[B, w_dim] (or f32[B, num_ws, "
                     f"w_dim] in W+): expected one of {allowed}, got {shape}")
  if not bool(jnp.all(jnp.isfinite(start_ws))):
    raise ValueError("start_ws contains NaN or infinite values")


def target_keys(seed: int, indices: Any) -> jax.Array:
  """key[B]: the projection key of each target index, independent of batch composition."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(np.asarray(indices)))
