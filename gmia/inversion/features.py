"""Optimisation-based inversion of split-network features: features at a layer -> input image.

The attacker of a split network sees the activations a device sends after layer k and holds the
device half of the network (white-box, He et al. ACSAC 2019). The image is recovered by
minimising the relative feature distance at that layer plus total variation, an l2 pixel prior
and DeepInversion's batch-norm statistics matching over the layers the device half runs
(Mahendran & Vedaldi 2015; Yin et al. 2020).

Two parametrisations of the image:
  pixels (default): from a small random start, Adam with cosine decay, pixels clipped to
    [-1, 1] after every step;
  generator prior: the image is G(w) of a StyleGAN2 generator (resized to the network's input),
    w (W, or W+ per layer) optimised from w_avg with the schedule of NVIDIA's projector (Adam
    with learning-rate ramp-up / ramp-down, decaying noise on w; gmia.inversion.latent); the
    generator's fixed noise maps. The result can only be a face the generator can draw.

Any split network (gmia.models.split: IResNet, ResNetClassifier) can be inverted. Each step is
one jitted call vmapped over targets, driven from Python (gmia.inversion.stepping); each target
runs as a batch of one, so its batch-norm statistics are its own and a batch gives the results of
one target at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmia.models.preprocessing import preprocess
from gmia.inversion import latent, priors, stepping
from gmia.models import split, stylegan

# Input sides tried when the features of a non-spatial layer must reveal the input size.
_FLAT_CANDIDATES = range(8, 513, 8)


class _Parametrisation(NamedTuple):
  """How the optimised parameters make the image of one target.

  start: the initial parameters; render: parameters -> image f32[S, S, 3] in [-1, 1] as the
  network sees it; perturb: (parameters, step) -> where that step's gradient is taken;
  project: applied after every update; optimizer: the optax transformation.
  """
  start: jax.Array
  render: Callable[[jax.Array], jax.Array]
  perturb: Callable[[jax.Array, jax.Array], jax.Array]
  project: Callable[[jax.Array], jax.Array]
  optimizer: optax.GradientTransformation


@dataclasses.dataclass(frozen=True)
class FeatureInversionSettings:
  """Hyperparameters of the inversion.

  layer: where the network is split (a name of the network's `layers`).
  learning_rate, init_scale: Adam's initial step and the standard deviation of the random start
    image (pixel parametrisation).
  feature_weight, tv_weight, l2_weight, bn_weight: weights of the relative feature distance,
    total variation (power 2), mean squared pixel and batch-norm statistics losses.
  w_plus, latent_learning_rate, initial_w_noise, w_avg_samples: the generator prior's latent
    (one w per synthesis layer, or one for all), Adam's peak step, the noise added to w at step
    0 in units of the spread of w, and the mapped samples that estimate w_avg and that spread.
  """
  layer: str = "stage1"
  num_steps: int = 500
  learning_rate: float = 0.05
  feature_weight: float = 1.0
  tv_weight: float = 0.01
  l2_weight: float = 1e-3
  bn_weight: float = 1e-3
  init_scale: float = 0.1
  w_plus: bool = False
  latent_learning_rate: float = 0.1
  initial_w_noise: float = 0.05
  w_avg_samples: int = 10000

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be positive, got {self.num_steps}")
    if min(self.feature_weight, self.tv_weight, self.l2_weight, self.bn_weight) < 0:
      raise ValueError("loss weights must be non-negative")
    if self.w_avg_samples < 1:
      raise ValueError(f"w_avg_samples must be positive, got {self.w_avg_samples}")


def image_size(model: nn.Module, variables: dict[str, Any], layer: str,
               feature_shape: tuple[int, ...]) -> int:
  """The side of the square inputs whose activations at `layer` have `feature_shape`.

  Spatial features [H, W, C]: the smallest H * 2^k whose activations have H x W positions.
  Flat features (an embedding, logits): the smallest of 8, 16, ..., 512 that gives this shape,
  if the parameters fix the size (a dense layer over a flattened map); after global pooling
  every size fits, and the size has to be given (make_feature_inverter's input_size).
  """
  spatial = len(feature_shape) == 3
  fits = lambda shape: shape[:2] == tuple(feature_shape[:2]) if spatial else (
      shape == tuple(feature_shape))

  def runs(size: int) -> tuple[int, ...] | None:
    try:
      return split.feature_shapes(model, variables, size, (layer,))[layer]
    except (ValueError, TypeError, flax.errors.FlaxError):  # The network rejects this size.
      return None

  candidates = [feature_shape[0] * 2**k for k in range(7)] if spatial else _FLAT_CANDIDATES
  size = next((s for s in candidates if (shape := runs(s)) is not None and fits(shape)), None)
  if size is None:
    raise ValueError(f"no square input gives features of shape {tuple(feature_shape)} at layer "
                     f"{layer!r}: features of another layer or network?")
  if not spatial and runs(2 * size) is not None:
    raise ValueError(f"features at {layer!r} do not fix the input size (global pooling): pass "
                     "input_size")
  return size


def batch_norms_before(model: nn.Module, variables: dict[str, Any], size: int,
                       layer: str) -> int:
  """How many BatchNorm layers run on the way to `layer` for size x size inputs: what the
  batch-norm statistics prior has to match (shape inference only, nothing runs)."""
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  _, moments = jax.eval_shape(lambda v, x: priors.batch_norm_statistics(
      model, v, x, train=False, capture=(layer,)), variables, images)
  return len(moments)


def make_feature_inverter(model: nn.Module, settings: FeatureInversionSettings, *,
                          input_size: int | None = None,
                          generator: stylegan.Generator | None = None
                          ) -> Callable[..., dict[str, jax.Array]]:
  """Jitted `invert(variables, features, keys, g_vars=None) -> results`.

  model: a split network (see the module docstring); input_size: the side of its square inputs
  (default: read off the features by `image_size`); generator: optimise G(w) instead of
  pixels (the generator prior); its variables {"params", "buffers"} are then `g_vars`.
  variables: the network's {"params", "batch_stats"}; features: f32[B, ...] the activations at
  settings.layer (as `model.apply(variables, x, train=False, capture=(layer,))[layer]` gives);
  keys: key[B], one per target (the random start image, or the noise on w).
  Returns {"images": f32[B, S, S, 3] in [-1, 1] at the network's input size,
  "feature_distance": f32[B] at the result, "start_feature_distance": f32[B] at the start
  (the random image, or G(w_avg)), "loss": f32[B, num_steps]}; with a generator also
  "ws": f32[B, num_ws, w_dim], the images being G(ws) resized and clipped.
  """
  layer = settings.layer
  if layer not in model.layers:
    raise ValueError(f"unknown layer {layer!r}; choose from {model.layers}")
  if generator is not None:
    if generator.img_channels != 3:
      raise ValueError(f"the generator prior needs an RGB generator, got "
                       f"{generator.img_channels} channels")
    # Each target's synthesis runs on a batch of one under vmap (see gmia.inversion.latent).
    generator = generator.clone(fused_modconv=False)

  def losses(variables, image, target):
    out, moments = priors.batch_norm_statistics(model, variables, image[None], train=False,
                                                capture=(layer,))
    distance = priors.feature_distance(out[layer], target[None])[0]
    loss = (settings.feature_weight * distance
            + settings.tv_weight * priors.total_variation(image[None])[0]
            + settings.l2_weight * priors.l2_prior(image[None])[0])
    if settings.bn_weight > 0:
      loss += settings.bn_weight * priors.batch_norm_loss(moments)
    return loss, distance

  def pixel_parametrisation(key, size):
    """The image itself, from a small random start, clipped to [-1, 1] after every step."""
    return _Parametrisation(
        start=settings.init_scale * jax.random.normal(key, (size, size, 3)),
        render=lambda image: image, perturb=lambda image, _: image,
        project=lambda image: jnp.clip(image, -1.0, 1.0),
        optimizer=optax.adam(optax.cosine_decay_schedule(settings.learning_rate,
                                                         settings.num_steps)))

  def latent_parametrisation(g_vars, w_avg, w_std, key, size):
    """w f32[1 or num_ws, w_dim] from w_avg; the image is G(w) at the network's input size."""
    num_ws = stylegan.num_ws(generator.img_resolution)
    start = jnp.broadcast_to(w_avg, (num_ws if settings.w_plus else 1, w_avg.shape[0]))

    def render(w):
      ws = jnp.broadcast_to(w, (num_ws, w.shape[-1]))
      image = generator.apply(g_vars, ws[None], "const", method=generator.synthesize)
      return jnp.clip(preprocess(image, size)[0], -1.0, 1.0)  # As a camera would deliver it.

    def perturb(w, index):
      scale = latent.w_noise_scale(index, settings.num_steps, w_std, settings.initial_w_noise,
                                   latent.ProjectionSettings.noise_ramp_length)
      return w + scale * jax.random.normal(jax.random.fold_in(key, index), w.shape)

    # NVIDIA's projector schedule: learning-rate ramp-up and cosine ramp-down.
    optimizer = optax.adam(lambda count: settings.latent_learning_rate * latent.learning_rate_ramp(
        count, settings.num_steps, latent.ProjectionSettings.lr_rampup_length,
        latent.ProjectionSettings.lr_rampdown_length))
    return _Parametrisation(start, render, perturb, lambda w: w, optimizer)

  def parametrisation(prior, key, size):
    return (pixel_parametrisation(key, size) if prior is None
            else latent_parametrisation(*prior, key, size))

  def start_one(prior, key, size):
    way = parametrisation(prior, key, size)
    return way.start, way.optimizer.init(way.start)

  def step_one(variables, prior, target, key, carry, index, size):
    way = parametrisation(prior, key, size)
    params, opt_state = carry
    (loss, _), grad = jax.value_and_grad(
        lambda p: losses(variables, way.render(way.perturb(p, index)), target),
        has_aux=True)(params)
    updates, opt_state = way.optimizer.update(grad, opt_state, params)
    return (way.project(optax.apply_updates(params, updates)), opt_state), loss

  def finish_one(variables, prior, target, key, params, size):
    way = parametrisation(prior, key, size)
    image = way.render(params)
    out = {"images": image, "feature_distance": losses(variables, image, target)[1],
           "start_feature_distance": losses(variables, way.render(way.start), target)[1]}
    if prior is not None:
      out["ws"] = jnp.broadcast_to(params, (stylegan.num_ws(generator.img_resolution),
                                            params.shape[-1]))
    return out

  def sized(variables, features):
    size = input_size or image_size(model, variables, layer, features.shape[1:])
    expected = split.feature_shapes(model, variables, size, (layer,))[layer]
    if features.shape[1:] != expected:
      raise ValueError(f"features at {layer} must be f32[B, {', '.join(map(str, expected))}] "
                       f"for {size} px inputs, got shape {features.shape}")
    return size

  @jax.jit
  def begin(variables, features, keys, g_vars):
    size = sized(variables, features)
    prior = None
    if generator is not None:
      prior = (g_vars, *latent.latent_statistics(generator, g_vars, jax.random.key(0),
                                                 settings.w_avg_samples))
    carry = jax.vmap(start_one, in_axes=(None, 0, None))(prior, keys, size)
    return prior, carry

  @functools.partial(jax.jit, donate_argnums=4)
  def advance(variables, prior, features, keys, carry, index):
    size = sized(variables, features)
    return jax.vmap(step_one, in_axes=(None, None, 0, 0, 0, None, None))(
        variables, prior, features, keys, carry, index, size)

  @jax.jit
  def finish(variables, prior, features, keys, params):
    size = sized(variables, features)
    return jax.vmap(finish_one, in_axes=(None, None, 0, 0, 0, None))(
        variables, prior, features, keys, params, size)

  def invert(variables, features, keys, g_vars):
    prior, carry = begin(variables, features, keys, g_vars)
    carry, history = stepping.run_steps(
        lambda carry, index: advance(variables, prior, features, keys, carry, index), carry,
        settings.num_steps, features.shape[0])
    return dict(finish(variables, prior, features, keys, carry[0]), loss=history)

  def checked(variables: dict[str, Any], features: jax.Array, keys: jax.Array,
              g_vars: dict[str, Any] | None = None) -> dict[str, jax.Array]:
    if features.ndim < 2:
      raise ValueError(f"features must be f32[B, ...], got shape {features.shape}")
    if keys.shape != features.shape[:1]:
      raise ValueError(f"need one key per target: keys {keys.shape}, features "
                       f"{features.shape[:1]}")
    if (generator is None) != (g_vars is None):
      raise ValueError("the generator prior needs both the generator (make_feature_inverter) "
                       "and its variables (g_vars), and g_vars means nothing without it")
    return invert(variables, features, keys, g_vars)

  return checked

