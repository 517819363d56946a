"""How well an identity encoder tells people apart, on identities it never trained on.

Verification: a pair of photos is a trial (genuine: same identity, impostor: different); score =
cosine similarity. ROC AUC and TAR (true accepts) at FAR (false accepts) 1e-3 and 1e-2 are the
exact ROC of gmia.metrics with genuine pairs as the positives. All genuine pairs are scored, and all
impostor pairs up to a cap (a seeded uniform sample beyond it), never as an N x N matrix.
Identification: each photo's nearest other photo (leave-one-out 1-NN, from the streamed top-k
kernel) must be of the same identity. The same 1-NN run on raw pixels is the baseline an encoder
has to beat.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gmia import kernels, metrics, parallel
from gmia.face_encoder.embed import embed
from gmia.models.iresnet import IResNet

FARS = (1e-3, 1e-2)
# Impostor pairs scored at most: all of them up to this many pairs, else a random sample this size.
MAX_IMPOSTOR_PAIRS = 2_000_000
# Scores (or gathered embedding entries) held at once while scoring pairs.
_BLOCK_ELEMENTS = 1 << 22


def embed_images(model: IResNet, variables: dict[str, Any], images: np.ndarray, mesh: Mesh,
                 chunk: int = 256) -> np.ndarray:
  """u8[N, H, W, 3] -> f32[N, D] unit embeddings, in fixed-size chunks sharded over `mesh` (one
  compilation whatever N)."""
  return parallel.map_chunks(_sharded_embed(model, mesh), variables, images, mesh, chunk)


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
  The two nearest photos of each come from the streamed kernel (no N x N matrix): the first is the
  query itself unless an exact duplicate with a smaller index ties with it, and then that
  duplicate is the nearest other photo.
  """
  _check_labels(features, identity)
  x = jnp.asarray(features, jnp.float32)
  _, two_nearest = kernels.top_k(x, x, 2, metric="sqeuclidean")
  two_nearest = np.asarray(two_nearest)
  itself = two_nearest[:, 0] == np.arange(len(two_nearest))
  nearest = np.where(itself, two_nearest[:, 1], two_nearest[:, 0])
  return float(np.mean(identity[nearest] == identity))


def _identity_groups(identity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(order, starts, counts): photos sorted by identity, and where each identity's run begins."""
  order = np.argsort(identity, kind="stable")
  _, starts, counts = np.unique(identity[order], return_index=True, return_counts=True)
  return order, starts, counts


def genuine_pairs(identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every unordered pair of photos of the same identity, as index arrays (i, j): int[P] each."""
  order, starts, counts = _identity_groups(identity)
  position = np.arange(len(identity))
  # Partners of a sorted position: the later photos of its identity's run.
  partners = np.repeat(starts + counts, counts) - position - 1
  first = np.repeat(position, partners)
  offset = np.arange(len(first)) - np.repeat(np.cumsum(partners) - partners, partners)
  return order[first], order[first + 1 + offset]


def sample_impostor_pairs(identity: np.ndarray, num_pairs: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`num_pairs` impostor pairs (i, j) drawn uniformly with replacement: int[num_pairs] each.

  i is drawn in proportion to its photos of other identities, then j uniformly among them, so
  every impostor pair is equally likely, without rejection.
  """
  order, starts, counts = _identity_groups(identity)
  group = np.repeat(np.arange(len(counts)), counts)
  others = len(identity) - counts[group]
  rng = np.random.default_rng(seed)
  first = rng.choice(len(identity), size=num_pairs, p=others / others.sum())
  second = rng.integers(0, others[first])
  # Skip over the first photo's own identity run.
  first_group = group[first]
  second = np.where(second >= starts[first_group], second + counts[first_group], second)
  return order[first], order[second]


def _pair_scores(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """f32[P]: dot products of the listed pairs, gathered in blocks of bounded size."""
  block = max(1, _BLOCK_ELEMENTS // embeddings.shape[1])
  parts = [np.einsum("pd,pd->p", embeddings[first[start:start + block]],
                     embeddings[second[start:start + block]])
           for start in range(0, len(first), block)]
  return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _all_impostor_scores(embeddings: np.ndarray, identity: np.ndarray) -> np.ndarray:
  """f32[P]: dot products of every impostor pair i < j, a block of rows at a time."""
  n = len(embeddings)
  rows = max(1, _BLOCK_ELEMENTS // n)
  parts = []
  for start in range(0, n, rows):
    stop = min(n, start + rows)
    # Columns from `start` on: the pairs j > i of these rows.
    scores = embeddings[start:stop] @ embeddings[start:].T
    later = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
    impostor = identity[start:stop, None] != identity[None, start:]
    parts.append(scores[later & impostor])
  return np.concatenate(parts)


def verification(embeddings: np.ndarray, identity: np.ndarray, *,
                 max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS, seed: int = 0) -> dict[str, float]:
  """ROC AUC and TAR at FARS of unit `embeddings` f32[N, D] with identities [N].

  TAR at FAR is the membership TPR at FPR with genuine pairs as the positives (gmia.metrics).
  Every genuine pair is scored (there are few: sum over identities of c (c - 1) / 2). Impostor
  pairs: all of them when N (N - 1) / 2 <= `max_impostor_pairs`, else `max_impostor_pairs` drawn
  with `seed` (sample_impostor_pairs). genuine_pairs / impostor_pairs report the counts used;
  a FAR below 1 / impostor_pairs is not resolved and reported as NaN.
  """
  _check_labels(embeddings, identity)
  if not isinstance(max_impostor_pairs, (int, np.integer)) or max_impostor_pairs < 1:
    raise ValueError(f"max_impostor_pairs must be a positive int, got {max_impostor_pairs!r}")
  embeddings = np.asarray(embeddings, np.float32)
  genuine = _pair_scores(embeddings, *genuine_pairs(identity))
  n = len(embeddings)
  if n * (n - 1) // 2 <= max_impostor_pairs:
    impostor = _all_impostor_scores(embeddings, identity)
  else:
    impostor = _pair_scores(embeddings,
                            *sample_impostor_pairs(identity, max_impostor_pairs, seed))
  scores = np.concatenate([genuine, impostor])
  is_genuine = np.arange(len(scores)) < len(genuine)
  result = {"verification_auc": metrics.auc(scores, is_genuine),
            "genuine_pairs": float(len(genuine)), "impostor_pairs": float(len(impostor))}
  operating = metrics.tpr_at_fpr(scores, is_genuine, FARS)
  for far, tar, resolved in zip(FARS, operating.tpr, operating.resolved):
    result[f"tar_at_far_{far:g}"] = float(tar) if resolved else float("nan")
  return result


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
