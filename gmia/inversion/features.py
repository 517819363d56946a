"""Optimisation-based inversion of split-network features: features at a layer -> input image.

The attacker of a split network sees the activations a device sends after layer k and holds the
device half of the network (white-box, He et al. ACSAC 2019). The image is recovered by
minimising, from a small random start, the relative feature distance at that layer plus total
variation, an l2 pixel prior and DeepInversion's batch-norm statistics matching over the layers
the device half runs (Mahendran & Vedaldi 2015; Yin et al. 2020). Adam with cosine decay,
pixels clipped to [-1, 1] after every step.

One jitted `lax.scan` over steps, vmapped over targets; each target runs as a batch of one, so
its batch-norm statistics are its own and a batch gives the results of one target at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gmia.encoder.embed import input_size
from gmia.inversion import priors
from gmia.models import iresnet


@dataclasses.dataclass(frozen=True)
class FeatureInversionSettings:
  """Hyperparameters of the inversion.

  layer: where the network is split (a name of iresnet.LAYERS).
  feature_weight, tv_weight, l2_weight, bn_weight: weights of the relative feature distance,
    total variation (power 2), mean squared pixel and batch-norm statistics losses.
  init_scale: standard deviation of the random start image.
  """
  layer: str = "stage1"
  num_steps: int = 500
  learning_rate: float = 0.05
  feature_weight: float = 1.0
  tv_weight: float = 0.01
  l2_weight: float = 1e-3
  bn_weight: float = 1e-3
  init_scale: float = 0.1

  def __post_init__(self):
    if self.layer not in iresnet.LAYERS:
      raise ValueError(f"unknown layer {self.layer!r}; choose from {iresnet.LAYERS}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be positive, got {self.num_steps}")
    if min(self.feature_weight, self.tv_weight, self.l2_weight, self.bn_weight) < 0:
      raise ValueError("loss weights must be non-negative")


def image_size(model: iresnet.IResNet, variables: dict[str, Any], layer: str,
               feature_shape: tuple[int, ...]) -> int:
  """Input side length that gives features of `feature_shape` ([H, W, C] at a spatial layer):
  the stem keeps the size and every stage halves it; the embedding's is the dense layer's."""
  if layer == "embedding":
    return input_size(model, variables)
  return feature_shape[0] * 2 ** iresnet.LAYERS.index(layer)


def make_feature_inverter(model: iresnet.IResNet, settings: FeatureInversionSettings
                          ) -> Callable[..., dict[str, jax.Array]]:
  """Jitted `invert(variables, features, keys) -> results`.

  variables: the network's {"params", "batch_stats"}; features: f32[B, ...] the activations at
  settings.layer (as `model.apply(variables, x, train=False, capture=(layer,))[layer]` gives);
  keys: key[B], one per target (the random start image).
  Returns {"images": f32[B, S, S, 3] in [-1, 1], "feature_distance": f32[B] at the result,
  "loss": f32[B, num_steps]}.
  """
  layer = settings.layer
  tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.num_steps))

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

  def invert_one(variables, target, key, size):
    image = settings.init_scale * jax.random.normal(key, (size, size, 3))

    def step(carry, _):
      image, opt_state = carry
      (loss, _), grad = jax.value_and_grad(losses, argnums=1, has_aux=True)(variables, image,
                                                                           target)
      updates, opt_state = tx.update(grad, opt_state, image)
      image = jnp.clip(optax.apply_updates(image, updates), -1.0, 1.0)
      return (image, opt_state), loss

    (image, _), history = jax.lax.scan(step, (image, tx.init(image)), None,
                                       length=settings.num_steps)
    _, distance = losses(variables, image, target)
    return {"images": image, "feature_distance": distance, "loss": history}

  @jax.jit
  def invert(variables, features, keys):
    size = image_size(model, variables, layer, features.shape[1:])
    return jax.vmap(invert_one, in_axes=(None, 0, 0, None))(variables, features, keys, size)

  def checked(variables: dict[str, Any], features: jax.Array,
              keys: jax.Array) -> dict[str, jax.Array]:
    if layer != "embedding" and (features.ndim != 4 or features.shape[-1] != _width(model, layer)):
      raise ValueError(f"features at {layer} must be f32[B, H, W, {_width(model, layer)}], got "
                       f"shape {features.shape}")
    if keys.shape != features.shape[:1]:
      raise ValueError(f"need one key per target: keys {keys.shape}, features "
                       f"{features.shape[:1]}")
    return invert(variables, features, keys)

  return checked


def _width(model: iresnet.IResNet, layer: str) -> int:
  """Channels of the activations at a spatial layer."""
  index = iresnet.LAYERS.index(layer)
  return model.width * 2 ** max(index - 1, 0)
