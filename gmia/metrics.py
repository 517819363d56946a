"""Metrics: membership ROC over identities, and image similarity of reconstructions.

Membership: members are the positive class (label 1) and a higher score means "more likely a
member". The ROC is exact: built from the sorted scores, one point per distinct score, tied
scores entering together (a diagonal step). AUC is the trapezoid under it, which equals the
Mann-Whitney U statistic with ties counted 1/2. TPR at a target FPR is the largest TPR among ROC
points with FPR <= target, never interpolated from a threshold grid. These run in float64 numpy,
so scores that differ only past float32 precision are not turned into ties; every function works
on a batch of score vectors at once, which is how the bootstrap resamples without a loop per
resample.

Images: PSNR and SSIM (Wang, Bovik, Sheikh, Simoncelli 2004: 11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, statistics over the valid window positions) in jax, jit- and vmap-friendly.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEFAULT_FPR_TARGETS = (1e-3, 1e-2, 1e-1)
# Bootstrap resamples are processed in batches of about this many scores.
_BOOTSTRAP_BATCH_SCORES = 1 << 22


# ------------------------------------------------------------------------------------------------
# Membership ROC.


def _check_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  """float64[N] scores and bool[N] labels, or a ValueError naming the problem."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 1 or labels.ndim != 1:
    raise ValueError(f"scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}")
  if scores.shape != labels.shape:
    raise ValueError(f"scores ({len(scores)}) and labels ({len(labels)}) differ in length")
  if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
    raise ValueError(f"scores must be real numbers, got {scores.dtype}")
  if np.any(np.isnan(scores)):
    raise ValueError(f"scores contain NaN (first at position {int(np.argmax(np.isnan(scores)))})")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 1 for members and 0 for non-members, found other values")
  labels = labels.astype(bool)
  num_positive = int(labels.sum())
  if num_positive in (0, len(labels)):
    missing = "members (label 1)" if num_positive == 0 else "non-members (label 0)"
    raise ValueError(f"the ROC needs both classes, but there are no {missing}")
  return scores.astype(np.float64), labels


def _check_targets(fpr_targets) -> np.ndarray:
  targets = np.asarray(fpr_targets, np.float64).reshape(-1)
  if not len(targets) or np.any(~((targets > 0) & (targets <= 1))):
    raise ValueError(f"fpr_targets must be non-empty and in (0, 1], got {fpr_targets!r}")
  return targets


class _Roc(NamedTuple):
  """ROC points along the scores sorted in descending order, shapes [..., N].

  Each position holds the point reached after its whole tie group (the ROC point of the
  threshold equal to its score), so positions inside a tie group repeat their group's point.
  """
  fpr: np.ndarray
  tpr: np.ndarray
  sorted_scores: np.ndarray
  group_end: np.ndarray  # bool: last position of a tie group, one per distinct score


def _roc(scores: np.ndarray, labels: np.ndarray) -> _Roc:
  """Exact ROC of score vectors [..., N] with labels [..., N] (each row holds both classes)."""
  order = np.argsort(-scores, axis=-1, kind="stable")
  sorted_scores = np.take_along_axis(scores, order, -1)
  positive = np.take_along_axis(labels, order, -1)
  true_positives = np.cumsum(positive, axis=-1)
  false_positives = np.cumsum(~positive, axis=-1)
  n = scores.shape[-1]
  group_end = np.ones(scores.shape, bool)
  group_end[..., :-1] = sorted_scores[..., 1:] != sorted_scores[..., :-1]
  # Index of the end of each position's tie group: the next group end at or after it.
  end = np.where(group_end, np.arange(n), n)
  end = np.minimum.accumulate(end[..., ::-1], axis=-1)[..., ::-1]
  true_positives = np.take_along_axis(true_positives, end, -1)
  false_positives = np.take_along_axis(false_positives, end, -1)
  return _Roc(fpr=false_positives / false_positives[..., -1:],
              tpr=true_positives / true_positives[..., -1:],
              sorted_scores=sorted_scores, group_end=group_end)


def _auc(roc: _Roc) -> np.ndarray:
  """Trapezoid under the ROC from (0, 0); repeated points add nothing. Shape [...]."""
  fpr_step = np.diff(roc.fpr, axis=-1, prepend=0.0)
  tpr_prev = np.concatenate([np.zeros_like(roc.tpr[..., :1]), roc.tpr[..., :-1]], axis=-1)
  return np.sum(fpr_step * (roc.tpr + tpr_prev) / 2, axis=-1)


def _tpr_at(roc: _Roc, targets: np.ndarray) -> np.ndarray:
  """Largest TPR with FPR <= target, [..., T]; the point (0, 0) is always allowed."""
  allowed = roc.fpr[..., None, :] <= targets[:, None]
  return np.max(np.where(allowed, roc.tpr[..., None, :], 0.0), axis=-1)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The exact ROC: (fpr, tpr, thresholds), each float64[M+1] for M distinct scores.

  Point j is the rate of scores >= thresholds[j]; the first point is (0, 0) at threshold +inf.
  """
  roc = _roc(*_check_scores(scores, labels))
  at = roc.group_end
  return (np.concatenate([[0.0], roc.fpr[at]]), np.concatenate([[0.0], roc.tpr[at]]),
          np.concatenate([[np.inf], roc.sorted_scores[at]]))


def auc(scores, labels) -> float:
  """Area under the exact ROC: P(member score > non-member score) + P(equal) / 2."""
  return float(_auc(_roc(*_check_scores(scores, labels))))


class TprAtFpr(NamedTuple):
  """TPR at each FPR target; `resolved` is False where target < 1 / num_negatives, since no
  threshold then has a false-positive rate between 0 and the target."""
  fpr_targets: np.ndarray
  tpr: np.ndarray
  resolved: np.ndarray


def _resolved(targets: np.ndarray, num_negatives: int) -> np.ndarray:
  return 1.0 / num_negatives <= targets


def tpr_at_fpr(scores, labels, fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS) -> TprAtFpr:
  """Largest TPR at FPR <= each target, from the exact ROC."""
  scores, labels = _check_scores(scores, labels)
  targets = _check_targets(fpr_targets)
  return TprAtFpr(targets, _tpr_at(_roc(scores, labels), targets),
                  _resolved(targets, int((~labels).sum())))


class Intervals(NamedTuple):
  """Bootstrap percentile intervals: auc float64[2], tpr_at_fpr float64[T, 2] (low, high)."""
  auc: np.ndarray
  tpr_at_fpr: np.ndarray


def bootstrap_intervals(scores, labels, *, fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
                        num_resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> Intervals:
  """Percentile bootstrap intervals of AUC and TPR at each FPR target.

  Members and non-members are resampled separately (stratified), so every resample keeps both
  classes and their counts. All resamples form one index array, evaluated in large batches.
  """
  scores, labels = _check_scores(scores, labels)
  targets = _check_targets(fpr_targets)
  if not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
    raise ValueError(f"num_resamples must be a positive int, got {num_resamples!r}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
  members, non_members = scores[labels], scores[~labels]
  rng = np.random.default_rng(seed)
  resampled = np.concatenate([
      members[rng.integers(0, len(members), (num_resamples, len(members)))],
      non_members[rng.integers(0, len(non_members), (num_resamples, len(non_members)))]], axis=1)
  resampled_labels = np.broadcast_to(np.repeat([True, False], [len(members), len(non_members)]),
                                     resampled.shape)
  batch = max(1, _BOOTSTRAP_BATCH_SCORES // (len(scores) * len(targets)))
  aucs, tprs = [], []
  for start in range(0, num_resamples, batch):
    roc = _roc(resampled[start:start + batch], resampled_labels[start:start + batch])
    aucs.append(_auc(roc))
    tprs.append(_tpr_at(roc, targets))
  quantiles = [(1 - confidence) / 2, (1 + confidence) / 2]
  return Intervals(auc=np.quantile(np.concatenate(aucs), quantiles),
                   tpr_at_fpr=np.quantile(np.concatenate(tprs), quantiles, axis=0).T)


def membership_report(scores, labels, *, fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
                      num_resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict:
  """All membership metrics as a JSON-ready dict, with class counts and bootstrap intervals."""
  scores, labels = _check_scores(scores, labels)
  num_negatives = int((~labels).sum())
  point = tpr_at_fpr(scores, labels, fpr_targets)
  intervals = bootstrap_intervals(scores, labels, fpr_targets=fpr_targets,
                                  num_resamples=num_resamples, seed=seed, confidence=confidence)
  rows = []
  for target, tpr, resolved, interval in zip(point.fpr_targets, point.tpr, point.resolved,
                                             intervals.tpr_at_fpr):
    row = {"fpr": float(target), "tpr": float(tpr), "interval": [float(v) for v in interval],
           "resolved": bool(resolved)}
    if not resolved:
      row["note"] = (f"not resolved: {num_negatives} non-members give FPR steps of "
                     f"1/{num_negatives} = {1 / num_negatives:.3g} > {target:g}")
    rows.append(row)
  return {
      "num_positives": int(labels.sum()),
      "num_negatives": num_negatives,
      "auc": auc(scores, labels),
      "auc_interval": [float(v) for v in intervals.auc],
      "tpr_at_fpr": rows,
      "confidence": float(confidence),
      "num_resamples": int(num_resamples),
      "seed": int(seed),
  }


# ------------------------------------------------------------------------------------------------
# Image similarity.


def _check_image_pair(images, references, data_range) -> tuple[jax.Array, jax.Array]:
  if np.shape(images) != np.shape(references):
    raise ValueError(f"images {np.shape(images)} and references {np.shape(references)} "
                     "differ in shape")
  if np.ndim(images) < 3:
    raise ValueError(f"images must be [..., H, W, C], got shape {np.shape(images)}")
  if isinstance(data_range, (int, float)) and not data_range > 0:
    raise ValueError(f"data_range must be positive (2 for [-1, 1], 255 for uint8), "
                     f"got {data_range}")
  return jnp.asarray(images, jnp.float32), jnp.asarray(references, jnp.float32)


def psnr(images: jax.Array, references: jax.Array, *, data_range: float = 2.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB, f32[...] for images f[..., H, W, C].

  data_range: max - min of the pixel scale (2 for [-1, 1], 255 for uint8). Identical images
  give +inf.
  """
  images, references = _check_image_pair(images, references, data_range)
  mse = jnp.mean(jnp.square(images - references), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(jnp.square(jnp.float32(data_range)) / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """float32[size], normalised to sum 1: one factor of the separable SSIM window."""
  x = np.arange(size) - (size - 1) / 2
  window = np.exp(-x ** 2 / (2 * sigma ** 2))
  return (window / window.sum()).astype(np.float32)


def _window_mean(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Gaussian-weighted local means at the valid positions: [B, H, W, C] -> [B, H-s+1, W-s+1, C]."""
  batch, height, width, channels = x.shape
  planes = jnp.moveaxis(x, -1, 1).reshape(batch * channels, height, width, 1)
  for kernel_shape in ((len(window), 1, 1, 1), (1, len(window), 1, 1)):
    planes = lax.conv_general_dilated(planes, jnp.asarray(window).reshape(kernel_shape), (1, 1),
                                      "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=lax.Precision.HIGHEST)
  return jnp.moveaxis(planes.reshape(batch, channels, *planes.shape[1:3]), 1, -1)


def ssim(images: jax.Array, references: jax.Array, *, data_range: float = 2.0,
         window_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> jax.Array:
  """Structural similarity, f32[...] for images f[..., H, W, C] (H, W >= window_size).

  The mean SSIM map over valid window positions and channels, with windowed (biased) variances
  as in Wang et al. 2004. data_range as in `psnr`.
  """
  images, references = _check_image_pair(images, references, data_range)
  *batch_shape, height, width, channels = images.shape
  if min(height, width) < window_size:
    raise ValueError(f"SSIM needs images of at least {window_size}x{window_size}, "
                     f"got {height}x{width}")
  window = gaussian_window(window_size, sigma)
  x = images.reshape(-1, height, width, channels)
  y = references.reshape(-1, height, width, channels)
  mean = lambda z: _window_mean(z, window)
  mu_x, mu_y = mean(x), mean(y)
  var_x = mean(x * x) - mu_x ** 2
  var_y = mean(y * y) - mu_y ** 2
  cov = mean(x * y) - mu_x * mu_y
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) *
                                                          (var_x + var_y + c2))
  return jnp.mean(ssim_map, axis=(1, 2, 3)).reshape(batch_shape)
