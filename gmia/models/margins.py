"""Additive-margin softmax heads for face recognition: ArcFace and CosFace, plain or class-sharded.

Logits are scaled cosines between unit embeddings and unit class centres. The target class gets a
margin the way insightface's arcface_torch applies it: the margin changes the *value* of the target
logit but not its gradient (arcface_torch edits the logits in place under `torch.no_grad()`), i.e.
a straight-through margin.

- ArcFace (s=64, m=0.5): target cos(theta) -> cos(theta + m). Where theta + m would pass pi the
  logit would stop decreasing with theta, so insightface's threshold rule uses cos(theta) - m sin(m)
  there instead (theta > pi - m); `easy_margin` applies the margin only where cos(theta) > 0.
- CosFace (s=64, m=0.4): target cos(theta) -> cos(theta) - m.

The sharded head holds the class centres split over a mesh axis (insightface's Partial FC without
sampling): every device scores the whole global batch against its own classes, and the softmax
normaliser comes from a cross-device max and sum, so the number of identities is bounded by the
memory of all devices together rather than of one.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from gmia.models.preprocessing import normalize


@dataclasses.dataclass(frozen=True)
class Margin:
  """Margin head settings. kind: "arcface" or "cosface"; scale s; margin m (radians for ArcFace)."""
  kind: str = "arcface"
  scale: float = 64.0
  margin: float = 0.5
  easy_margin: bool = False

  def __post_init__(self):
    if self.kind not in ("arcface", "cosface"):
      raise ValueError(f"unknown margin kind {self.kind!r}; choose 'arcface' or 'cosface'")
    if not 0 <= self.margin < math.pi / 2:
      raise ValueError(f"margin {self.margin} outside [0, pi/2)")


def target_logit(cosine: jax.Array, margin: Margin) -> jax.Array:
  """The margin-adjusted target cosine for cosines of the target class (any shape)."""
  if margin.kind == "cosface":
    return cosine - margin.margin
  sin = jnp.sqrt(jnp.clip(1.0 - cosine**2, 0.0, 1.0))
  with_margin = cosine * math.cos(margin.margin) - sin * math.sin(margin.margin)  # cos(theta + m)
  if margin.easy_margin:
    return jnp.where(cosine > 0, with_margin, cosine)
  return jnp.where(cosine > math.cos(math.pi - margin.margin), with_margin,
                   cosine - math.sin(math.pi - margin.margin) * margin.margin)


def margin_logits(cosine: jax.Array, is_target: jax.Array, margin: Margin) -> jax.Array:
  """Scaled logits f32[B, C] with the straight-through margin on the target entries.

  cosine: f32[B, C] in [-1, 1]; is_target: bool[B, C], at most one True per row.
  """
  cosine = jnp.clip(cosine, -1.0, 1.0)
  shift = jnp.where(is_target, target_logit(cosine, margin) - cosine, 0.0)
  return margin.scale * (cosine + jax.lax.stop_gradient(shift))


def _cross_entropy(embeddings: jax.Array, centres: jax.Array, labels: jax.Array, first_class,
                   num_classes: int, margin: Margin, axis_name: str | None) -> jax.Array:
  """Per-sample margin softmax loss f32[B] against the classes first_class + [0, len(centres)).

  With `axis_name`, the softmax spans the centres of all devices on that axis (max and sum
  reduced across it); classes at or beyond `num_classes` are padding and take no part.
  """
  classes = first_class + jnp.arange(centres.shape[0])
  cosine = normalize(embeddings) @ normalize(centres).T
  is_target = labels[:, None] == classes[None, :]
  logits = margin_logits(cosine, is_target, margin)
  logits = jnp.where(classes[None, :] < num_classes, logits, -jnp.inf)
  # The max only stabilises the exponentials; its gradient cancels, as in insightface's
  # DistCrossEntropy.
  top = jax.lax.stop_gradient(jnp.max(logits, -1))
  if axis_name is not None:
    top = jax.lax.pmax(top, axis_name)
  sum_exp = jnp.sum(jnp.exp(logits - top[:, None]), -1)
  target = jnp.sum(jnp.where(is_target, logits, 0.0), -1)
  if axis_name is not None:
    sum_exp = jax.lax.psum(sum_exp, axis_name)
    target = jax.lax.psum(target, axis_name)
  return jnp.log(sum_exp) + top - target


def _check(embeddings: jax.Array, centres: jax.Array, labels: jax.Array) -> None:
  if embeddings.ndim != 2 or centres.ndim != 2 or embeddings.shape[1] != centres.shape[1]:
    raise ValueError(f"embeddings [B, D] and centres [C, D] expected, got {embeddings.shape} "
                     f"and {centres.shape}")
  if labels.shape != embeddings.shape[:1]:
    raise ValueError(f"labels must be [B] = {embeddings.shape[:1]}, got {labels.shape}")


def margin_loss(embeddings: jax.Array, centres: jax.Array, labels: jax.Array,
                margin: Margin) -> jax.Array:
  """Mean margin softmax loss over a batch.

  embeddings: f32[B, D] (any norm); centres: f32[C, D] class centres (any norm);
  labels: int[B] in [0, C).
  """
  _check(embeddings, centres, labels)
  return jnp.mean(_cross_entropy(embeddings, centres, labels, 0, centres.shape[0], margin, None))


def padded_num_classes(num_classes: int, num_shards: int) -> int:
  """Rows of a centre matrix that splits evenly over `num_shards` devices."""
  return -(-num_classes // num_shards) * num_shards


def sharded_margin_loss(embeddings: jax.Array, centres: jax.Array, labels: jax.Array,
                        margin: Margin, mesh: Mesh, axis: str, num_classes: int) -> jax.Array:
  """`margin_loss` with the batch and the class centres both split over mesh axis `axis`.

  embeddings: f32[B, D] and labels: int[B], sharded on `axis`; centres: f32[C_pad, D] sharded on
  `axis` by rows, C_pad = padded_num_classes(num_classes, mesh.shape[axis]); rows from
  `num_classes` on are padding. Each device gathers the global batch (B x D, small) and never
  holds more than its C_pad / n centres and B x C_pad / n logits. Equal to margin_loss on the
  first num_classes centres.
  """
  _check(embeddings, centres, labels)
  shards = mesh.shape[axis]
  if centres.shape[0] % shards or centres.shape[0] < num_classes:
    raise ValueError(f"{centres.shape[0]} centre rows cannot hold {num_classes} classes split "
                     f"over {shards} devices; use padded_num_classes")

  def local(embeddings, centres, labels):
    embeddings = jax.lax.all_gather(embeddings, axis, tiled=True)
    labels = jax.lax.all_gather(labels, axis, tiled=True)
    first_class = jax.lax.axis_index(axis) * centres.shape[0]
    return jnp.mean(_cross_entropy(embeddings, centres, labels, first_class, num_classes, margin,
                                   axis))

  return jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(axis)), out_specs=P())(
      embeddings, centres, labels)
