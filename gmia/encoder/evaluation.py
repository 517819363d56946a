"""How well an identity encoder tells people apart, on identities it never trained on.

Verification: every pair of photos is a trial (genuine: same identity, impostor: different);
score = cosine similarity. ROC AUC and TAR (true accepts) at FAR (false accepts) 1e-3 and 1e-2,
exact from the sorted impostor scores.
Identification: each photo's nearest other photo (leave-one-out 1-NN) must be of the same
identity. The same 1-NN run on raw pixels is the baseline an encoder has to beat.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia import parallel
from gmia.encoder.embed import embed
from gmia.models.iresnet import IResNet

FARS = (1e-3, 1e-2)


def embed_images(model: IResNet, variables: dict[str, Any], images: np.ndarray, mesh: Mesh,
                 chunk: int = 256) -> np.ndarray:
  """u8[N, H, W, 3] -> f32[N, D] unit embeddings, in fixed-size chunks sharded over `mesh`.

  Every chunk has the same shape (the last one is padded), so the embedding compiles once.
  """
  devices = mesh.shape[parallel.DATA_AXIS]
  chunk = -(-chunk // devices) * devices
  fn = _sharded_embed(model, mesh)
  out = []
  for start in range(0, len(images), chunk):
    part = images[start:start + chunk]
    padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], part.dtype)])
    # Every process holds the whole chunk; each device takes its rows (works across hosts).
    batch = jax.make_array_from_callback(padded.shape, parallel.data_sharding(mesh),
                                         lambda index, padded=padded: padded[index])
    out.append(np.asarray(fn(variables, batch))[:len(part)])
  return np.concatenate(out) if out else np.zeros((0, model.num_features), np.float32)


@functools.cache
def _sharded_embed(model: IResNet, mesh: Mesh):
  return jax.jit(functools.partial(embed, model), out_shardings=parallel.replicated(mesh))


def _check_labels(features: np.ndarray, identity: np.ndarray) -> None:
  if features.ndim != 2 or identity.shape != features.shape[:1]:
    raise ValueError(f"features [N, D] and identity [N] expected, got {features.shape} and "
                     f"{identity.shape}")
  if not np.all(np.isfinite(features)):
    raise ValueError("features contain NaN or inf")
  counts = np.unique(identity, return_counts=True)[1]
  if len(counts) < 2 or counts.max() < 2:
    raise ValueError("evaluation needs at least two identities and one identity with two photos")


def nearest_neighbour_accuracy(features: np.ndarray, identity: np.ndarray) -> float:
  """Leave-one-out 1-NN identification accuracy under squared L2 distance.

  features: f[N, D] (unit embeddings: L2 ranks like cosine; or flattened pixels); identity: [N].
  """
  _check_labels(features, identity)
  x = jnp.asarray(features, jnp.float32)
  distances = jnp.sum(x * x, 1)[None, :] - 2.0 * x @ x.T
  distances = distances.at[jnp.diag_indices(len(x))].set(jnp.inf)
  nearest = np.asarray(jnp.argmin(distances, 1))
  return float(np.mean(identity[nearest] == identity))


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
  """P(genuine score > impostor score), ties counting one half (Mann-Whitney U)."""
  scores = np.concatenate([genuine, impostor])
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  n_pos, n_neg = len(genuine), len(impostor)
  return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
  """Fraction of genuine scores above the threshold that accepts at most `far` of impostors."""
  allowed = int(np.floor(far * len(impostor)))
  threshold = np.sort(impostor)[::-1][allowed] if allowed < len(impostor) else -np.inf
  return float(np.mean(genuine > threshold))


def verification(embeddings: np.ndarray, identity: np.ndarray) -> dict[str, float]:
  """ROC AUC and TAR at FARS over all photo pairs of unit `embeddings` f32[N, D]."""
  _check_labels(embeddings, identity)
  similarity = embeddings @ embeddings.T
  upper = np.triu_indices(len(embeddings), k=1)
  same = (identity[:, None] == identity[None, :])[upper]
  scores = similarity[upper]
  genuine, impostor = scores[same], scores[~same]
  metrics = {"verification_auc": roc_auc(genuine, impostor),
             "genuine_pairs": float(len(genuine)), "impostor_pairs": float(len(impostor))}
  for far in FARS:
    # Below 1 / far impostor pairs the operating point is not resolved: report NaN.
    value = tar_at_far(genuine, impostor, far) if far * len(impostor) >= 1 else float("nan")
    metrics[f"tar_at_far_{far:g}"] = value
  return metrics


def evaluate(model: IResNet, variables: dict[str, Any], images: np.ndarray, identity: np.ndarray,
             mesh: Mesh) -> dict[str, float]:
  """Verification and identification metrics on photos u8[N, H, W, 3] of identities [N]."""
  embeddings = embed_images(model, variables, images, mesh)
  return {**verification(embeddings, identity),
          "identification_1nn": nearest_neighbour_accuracy(embeddings, identity)}


def pixel_identification(images: np.ndarray, identity: np.ndarray) -> float:
  """The baseline: leave-one-out 1-NN identification on raw pixels u8[N, H, W, 3]."""
  pixels = images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0
  return nearest_neighbour_accuracy(pixels, identity)
