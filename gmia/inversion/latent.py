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
import jax.numpy as jnp
import numpy as np
import optax

from gmia.models.preprocessing import preprocess
from gmia.inversion import priors, stepping
from gmia.models import iresnet, stylegan

PROJECTION_NOISE_MODES = ("const", "none")


@dataclasses.dataclass(frozen=True)
class ProjectionSettings:
  """Hyperparameters of the projection (defaults: NVIDIA's projector, LPIPS replaced).

  w_plus: one w per synthesis layer (W+) instead of one w for all (W).
  noise_mode: "const" optimises the noise maps; "none" runs the generator without noise.
  lr_rampup_length, lr_rampdown_length, noise_ramp_length: fractions of num_steps.
  initial_noise_factor: scale of the noise added to w at step 0, in units of the spread of w.
  regularize_noise_weight: weight of the noise maps' autocorrelation penalty.
  w_avg_samples: mapping-network samples that estimate w_avg and the spread of w.
  pixel_weight, perceptual_weight, identity_weight: weights of the distances to the target
    (mean squared pixel error; encoder feature distance at perceptual_layers; 1 - cosine of
    encoder embeddings). The last two need an encoder.
  """
  num_steps: int = 1000
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

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be positive, got {self.num_steps}")
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
  "start_mse": f32[B] of G at the start with the initial noise maps, "loss": f32[B, num_steps]}.
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
    return {"params": params, "opt_state": tx.init(params), "step_key": step_key,
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

  def finish_one(g_vars, run):
    params = run["params"]
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

  finish = jax.jit(jax.vmap(finish_one, in_axes=(None, 0)))

  def project(g_vars, encoder_vars, targets, keys, start_ws):
    runs, w_std = begin(g_vars, encoder_vars, targets, keys, start_ws)
    runs, losses = stepping.run_steps(
        lambda runs, index: advance(g_vars, encoder_vars, w_std, runs, index), runs,
        settings.num_steps, targets.shape[0])
    return dict(finish(g_vars, runs), loss=losses)

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
