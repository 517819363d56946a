"""Trained feature decoders in use: load one from its workdir, decode features to images.

    decoder, variables, meta = load_decoder(workdir, layer="stage2")
    images = decode(decoder, variables, features)
    # features: f32[B, *decoder.feature_shape], as
    #   model.apply(net_vars, x, train=False, capture=(layer,))[layer] gives them for images x
    #   f32[B, S, S, 3] in [-1, 1] at the network's input size S (meta["image_size"]);
    # images: f32[B, S, S, 3] in [-1, 1]. `decode` is jitted (decoder static).
    # meta: {"config", "method", "layers", "image_size", "decoders", "network", ...}.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gmia.models.decoders import Decoder
from gmia.runs import Run, load_run

KIND = "decoder"


def decoder_of(run: Run, layer: str | None = None) -> tuple[Decoder, dict[str, Any]]:
  """(decoder, variables {"params", "stats"}) of `layer`'s decoder in a decoder run (the only
  one when `layer` is None)."""
  layers = run.meta["layers"]
  if layer is None:
    if len(layers) != 1:
      raise ValueError(f"{run.workdir} holds decoders of layers {layers}: name one")
    layer = layers[0]
  if layer not in layers:
    raise ValueError(f"{run.workdir} holds no decoder of layer {layer!r}; it has {layers}")
  return run.model[layer], run.variables[layer]


def load_decoder(workdir: str, layer: str | None = None,
                 step: int | None = None) -> tuple[Decoder, dict[str, Any], dict[str, Any]]:
  """(decoder, variables {"params", "stats"}, meta) of `layer`'s decoder trained in `workdir`
  (the only one when `layer` is None). meta holds the run's config, "layers", "image_size" (the
  network input side S the decoder outputs), "method" and "network" (kind, workdir, layers)."""
  run = load_run(workdir, KIND, step=step)
  return (*decoder_of(run, layer), run.meta)


@functools.partial(jax.jit, static_argnums=0)
def _decode(decoder: Decoder, variables: Mapping[str, Any], features: jax.Array) -> jax.Array:
  return decoder.apply(variables, features)


def decode(decoder: Decoder, variables: Mapping[str, Any], features: jax.Array) -> jax.Array:
  """features f32[B, *decoder.feature_shape] -> images f32[B, S, S, 3] in [-1, 1]; jitted."""
  if features.ndim != 1 + len(decoder.feature_shape) or (
      tuple(features.shape[1:]) != decoder.feature_shape):
    raise ValueError(f"the decoder of layer {decoder.layer} reads features "
                     f"f32[B, {', '.join(map(str, decoder.feature_shape))}], got shape "
                     f"{tuple(features.shape)}")
  if not isinstance(features, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(features))):
    raise ValueError(f"features at {decoder.layer} contain NaN or infinity")
  return _decode(decoder, variables, jnp.asarray(features, jnp.float32))
