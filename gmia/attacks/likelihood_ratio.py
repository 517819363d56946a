"""A per-person likelihood ratio over shadow generators (LiRA, Carlini et al., S&P 2022).

A raw identity score mixes two things: how much the generator leaked the person, and how much the
person resembles faces in general. Shadow generators, trained with the target's recipe on random
halves of a pool of people, show what each person scores when a generator saw them (IN) and when
it did not (OUT). Per person, one Gaussian is fitted to each; the person's score under the target
is then judged against their own two distributions:

  online   log N(x; mu_in, s_in) - log N(x; mu_out, s_out): the likelihood ratio of "the target saw
           them" against "it did not" (needs shadows that saw the person);
  offline  (x - mu_out) / s_out: how far above their own OUT distribution the person sits (needs
           only shadows that never saw them). The one-sided p-value of LiRA's offline test,
           1 - Phi(z), is a decreasing function of z, the same for everybody, so z ranks people
           exactly as that p-value (or minus its log) does.

Any base score works (`best`, `topk_mean`, `count`, a density ratio, a denoising error); bounded
scores can be mapped to the real line first (LiRA fits its Gaussians to logit-scaled
confidences): `arctanh` for cosine similarities in [-1, 1], `logit` for scores in [0, 1], `log1p`
for counts.

With few shadows a per-person variance is noise, so (as LiRA and BaVarIA recommend) one variance
per side is pooled over people: the within-person variance, sum over people of the squared
deviations from each person's own mean over the degrees of freedom left. It is the default when
some person has fewer than `min_shadows` IN or OUT shadows.

Missing sides are imputed, never NaN: a person no shadow saw gets mu_in = mu_out + the mean IN -
OUT shift of the people seen both ways (the average effect of training on a person), a person
every shadow saw gets mu_out = mu_in - that shift, and a side with fewer than two shadows takes
the pooled variance. Every variance is floored at (1e-3 x the spread of all shadow scores)^2, so a
score that never moves (a count of 0 under every shadow) gives a large but finite ratio.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TRANSFORMS = ("none", "arctanh", "logit", "log1p")
# Below this many IN or OUT shadows for some person, per-person variances are too noisy
# (LiRA: per-example variances help only from about 64 shadows; fixed variance below).
DEFAULT_MIN_SHADOWS = 16
# Bounded scores are clipped this far inside their bounds before arctanh / logit: a cosine of
# exactly 1 (a sample that copies a photo) maps to arctanh(1 - 1e-6) = 7.25, not inf.
_BOUND_MARGIN = 1e-6
# Out-of-range tolerance: float32 unit vectors give cosines a little past +-1.
_RANGE_TOLERANCE = 1e-3
# Floor of every standard deviation, relative to the spread of all shadow scores.
_RELATIVE_STD_FLOOR = 1e-3
_ABSOLUTE_STD_FLOOR = 1e-12


def transform_scores(scores: np.ndarray, transform: str) -> np.ndarray:
  """f64[...]: scores mapped to the real line by `transform` (one of TRANSFORMS).

  arctanh: cosines in [-1, 1]; logit: scores in [0, 1]; log1p: counts >= 0; none: unchanged.
  """
  scores = np.asarray(scores, np.float64)
  if transform == "none":
    return scores
  low, high = {"arctanh": (-1.0, 1.0), "logit": (0.0, 1.0), "log1p": (0.0, np.inf)}.get(
      transform, (None, None))
  if low is None:
    raise ValueError(f"unknown score transform {transform!r}; transforms: {TRANSFORMS}")
  if np.any(scores < low - _RANGE_TOLERANCE) or np.any(scores > high + _RANGE_TOLERANCE):
    raise ValueError(f"transform {transform!r} needs scores in [{low:g}, {high:g}], got "
                     f"[{scores.min():.4g}, {scores.max():.4g}]")
  if transform == "log1p":
    return np.log1p(np.maximum(scores, 0.0))
  clipped = np.clip(scores, low + _BOUND_MARGIN, high - _BOUND_MARGIN)
  return np.arctanh(clipped) if transform == "arctanh" else np.log(clipped) - np.log1p(-clipped)


@dataclasses.dataclass(frozen=True)
class GaussianFit:
  """Each person's IN and OUT Gaussians over the shadows, in transformed units.

  mean_in, std_in, mean_out, std_out: f64[P] (mean_in / std_in are None when no shadow saw anyone:
  then only the offline score exists); num_in, num_out: i64[P] shadows that saw / did not see the
  person; imputed_in, imputed_out: bool[P], the person's mean on that side was imputed (no
  shadow on that side); pooled: one variance per side was pooled over people; transform: the
  score transform applied before fitting (targets get the same).
  """

  mean_in: np.ndarray | None
  std_in: np.ndarray | None
  mean_out: np.ndarray
  std_out: np.ndarray
  num_in: np.ndarray
  num_out: np.ndarray
  imputed_in: np.ndarray
  imputed_out: np.ndarray
  pooled: bool
  transform: str

  @property
  def num_people(self) -> int:
    return len(self.mean_out)


def _side_moments(scores: np.ndarray,
                  mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
  """Per person over the shadows in `mask` bool[K, P]: (count i64[P], mean f64[P] (NaN without
  shadows), pooled within-person variance or None if it cannot be estimated)."""
  count = mask.sum(axis=0)
  total = np.where(mask, scores, 0.0).sum(axis=0)
  mean = np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)
  squares = np.where(mask, np.square(scores - np.nan_to_num(mean)), 0.0)
  dof = int(count.sum() - np.count_nonzero(count))
  if dof > 0:
    return count, mean, float(squares.sum() / dof)
  if count.sum() > 1:
    # One shadow per person on this side: only the spread across people is left, which is
    # what LiRA's own fixed variance measures (np.std over all its IN scores).
    return count, mean, float(np.var(scores[mask], ddof=1))
  return count, mean, None


def _person_variance(scores: np.ndarray, mask: np.ndarray, mean: np.ndarray,
                     count: np.ndarray) -> np.ndarray:
  """f64[P] unbiased per-person variance, NaN for people with fewer than two shadows."""
  squares = np.where(mask, np.square(scores - np.nan_to_num(mean)), 0.0).sum(axis=0)
  return np.divide(squares, count - 1, out=np.full(count.shape, np.nan), where=count > 1)


def fit_gaussians(shadow_scores: np.ndarray, shadow_in: np.ndarray, *, transform: str = "none",
                  pooled_variance: bool | None = None,
                  min_shadows: int = DEFAULT_MIN_SHADOWS) -> GaussianFit:
  """Fits each person's IN and OUT Gaussians.

  shadow_scores: f[K, P], the base score of person p under shadow generator k; shadow_in:
  bool[K, P], shadow k was trained on person p. pooled_variance: True / False forces the choice;
  None pools when some person has fewer than `min_shadows` IN or OUT shadows (with no IN
  shadow anywhere, only the OUT side counts).
  """
  shadow_scores, shadow_in = np.asarray(shadow_scores), np.asarray(shadow_in)
  if shadow_scores.ndim != 2 or shadow_scores.size == 0:
    raise ValueError(f"shadow_scores must be a non-empty [K shadows, P people] array, got shape "
                     f"{shadow_scores.shape}")
  if shadow_in.shape != shadow_scores.shape or shadow_in.dtype != bool:
    raise ValueError(f"shadow_in must be bool {shadow_scores.shape} like shadow_scores, got "
                     f"{shadow_in.dtype} {shadow_in.shape}")
  if not np.all(np.isfinite(shadow_scores)):
    raise ValueError(f"shadow_scores hold {np.count_nonzero(~np.isfinite(shadow_scores))} "
                     "non-finite values (NaN or inf)")
  if not isinstance(min_shadows, (int, np.integer)) or min_shadows < 2:
    raise ValueError(f"min_shadows must be an int >= 2, got {min_shadows!r}")
  scores = transform_scores(shadow_scores, transform)
  num_in, mean_in, pooled_in = _side_moments(scores, shadow_in)
  num_out, mean_out, pooled_out = _side_moments(scores, ~shadow_in)
  has_in = bool(num_in.sum())
  if not num_out.sum():
    raise ValueError("every shadow saw every person: the OUT Gaussians need shadows that did not")
  if pooled_in is None and pooled_out is None:
    raise ValueError(f"{scores.size} shadow scores cannot estimate a variance: need at least two "
                     "scores on one side (IN or OUT)")
  # A side that cannot estimate its own variance borrows the other's.
  pooled_in = pooled_out if pooled_in is None else pooled_in
  pooled_out = pooled_in if pooled_out is None else pooled_out
  if pooled_variance is None:
    fewest = min(num_in.min(), num_out.min()) if has_in else num_out.min()
    pooled_variance = bool(fewest < min_shadows)
  floor = max(_RELATIVE_STD_FLOOR * float(np.std(scores)), _ABSOLUTE_STD_FLOOR) ** 2

  def std(mask, mean, count, pooled):
    variance = np.full(count.shape, pooled)
    if not pooled_variance:
      own = _person_variance(scores, mask, mean, count)
      variance = np.where(np.isnan(own), pooled, own)
    return np.sqrt(np.maximum(variance, floor))

  imputed_in, imputed_out = num_in == 0, num_out == 0
  if not has_in:
    return GaussianFit(None, None, mean_out, std(~shadow_in, mean_out, num_out, pooled_out),
                       num_in, num_out, imputed_in, imputed_out, pooled_variance, transform)
  both = ~imputed_in & ~imputed_out
  if both.any():
    shift = float(np.mean(mean_in[both] - mean_out[both]))
  else:
    shift = float(scores[shadow_in].mean() - scores[~shadow_in].mean())
  mean_in = np.where(imputed_in, mean_out + shift, mean_in)
  mean_out = np.where(imputed_out, mean_in - shift, mean_out)
  return GaussianFit(mean_in, std(shadow_in, mean_in, num_in, pooled_in), mean_out,
                     std(~shadow_in, mean_out, num_out, pooled_out), num_in, num_out, imputed_in,
                     imputed_out, pooled_variance, transform)


def _check_target(fit: GaussianFit, target: np.ndarray) -> np.ndarray:
  target = np.asarray(target)
  if target.shape != (fit.num_people,):
    raise ValueError(f"target scores must have shape ({fit.num_people},) like the shadows' "
                     f"people, got {target.shape}")
  if not np.all(np.isfinite(target)):
    raise ValueError(f"target scores hold {np.count_nonzero(~np.isfinite(target))} non-finite "
                     "values (NaN or inf)")
  return transform_scores(target, fit.transform)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  return -0.5 * np.square((x - mean) / std) - np.log(std) - 0.5 * np.log(2 * np.pi)


def online_scores(fit: GaussianFit, target: np.ndarray) -> np.ndarray:
  """f64[P]: log N(x; mu_in, s_in) - log N(x; mu_out, s_out) of each person's target score x
  f[P] (untransformed: the fit's transform is applied); higher: more likely a member."""
  if fit.mean_in is None:
    raise ValueError("no shadow saw any person: the online likelihood ratio needs IN shadows; "
                     "use offline_scores")
  x = _check_target(fit, target)
  return (_log_normal_pdf(x, fit.mean_in, fit.std_in)
          - _log_normal_pdf(x, fit.mean_out, fit.std_out))


def offline_scores(fit: GaussianFit, target: np.ndarray) -> np.ndarray:
  """f64[P]: (x - mu_out) / s_out of each person's target score x f[P] (untransformed): LiRA's
  one-sided offline test, ranked as its p-value ranks; higher: more likely a member."""
  x = _check_target(fit, target)
  return (x - fit.mean_out) / fit.std_out
