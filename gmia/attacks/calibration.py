"""Calibrated identity scores: what a person scores beyond what they would score anyway.

Some people resemble many faces and score high against any generator, member or not; with a few
dozen members, who they happen to be moves the AUC of an attack on a generator that never saw
them by about 0.1 either way. Two calibrations remove that, neither looking at membership labels:

  ref  the person's score against the target minus their score against a reference generator
       trained on other people (GAN-Leaks' calibration; the main job's control generator);
  pop  the person's score standardised by their similarity to a generic face population, the
       reference photos of every other person: (score - mean) / std (the Z-norm of speaker
       verification; a hub's high mean comes off, the spread puts people on one scale).

A third needs shadow generators (gmia.jobs.shadows), trained with the target's recipe on people
the attacker holds:

  lira          the person's own likelihood ratio: their score under the target against a Gaussian
                of their scores under the shadows that saw them and one under those that did not
                (gmia.attacks.likelihood_ratio, online); lira_offline: against the second alone.

Variant names: the attack's own (`best`, `topk_mean`, `count`) and `<variant>-ref`, `<variant>-pop`
for the similarity variants (`count` is calibrated by reference only: it is no similarity), and
`<variant>-lira`, `<variant>-lira_offline` with shadows.
Everything here reads an attack's outputs (scores.csv) and embeddings; nothing re-runs it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from gmia import metrics, parallel
from gmia.attacks import identity_membership as im
from gmia.attacks import denoising, likelihood_ratio
from gmia.data.split import IdentitySplit
from gmia.face_encoder import evaluation
from gmia.runs import load_run

SCORES_FILE = "scores.csv"
SIMILARITY_VARIANTS = ("best", "topk_mean")
# How each attack variant is mapped to the real line before the shadows' Gaussians are fitted.
LIRA_TRANSFORMS = {"best": "arctanh", "topk_mean": "arctanh", "count": "log1p", "density": "none",
                   denoising.VARIANT: "none"}
NEGATIVE_GROUPS = ("non_member", "population")  # scores.csv's name of people known not to be in.


@dataclasses.dataclass(frozen=True)
class AttackScores:
  """One attack's scores.csv: identity str[I] (the data set's identity, as text), is_member
  bool[I], scores {variant: f64[I]}."""

  identity: np.ndarray
  is_member: np.ndarray
  scores: Mapping[str, np.ndarray]

  def aligned_to(self, other: AttackScores) -> AttackScores:
    """These scores reordered to `other`'s identities (the same people, e.g. another generator
    attacked with the same references)."""
    row = {name: i for i, name in enumerate(self.identity.tolist())}
    missing = [name for name in other.identity.tolist() if name not in row]
    if missing or len(row) != len(other.identity):
      raise ValueError(f"the attacks score different people (e.g. {missing[:3]} only in one)")
    order = np.array([row[name] for name in other.identity.tolist()])
    return AttackScores(self.identity[order], self.is_member[order],
                        {v: s[order] for v, s in self.scores.items()})


def read_scores(attack_workdir: str) -> AttackScores:
  """The scores.csv of a membership attack's workdir (members and non-members only)."""
  path = os.path.join(attack_workdir, SCORES_FILE)
  with open(path) as handle:
    rows = list(csv.DictReader(handle))
  if not rows:
    raise ValueError(f"{path} holds no scores")
  groups = {row["group"] for row in rows}
  unknown = groups - {"member", *NEGATIVE_GROUPS}
  if unknown:
    raise ValueError(f"{path}: people of unknown membership (groups {sorted(unknown)})")
  variants = [column[len("score_"):] for column in rows[0] if column.startswith("score_")]
  return AttackScores(
      identity=np.array([row["identity"] for row in rows]),
      is_member=np.array([row["group"] == "member" for row in rows]),
      scores={v: np.array([float(row[f"score_{v}"]) for row in rows]) for v in variants})


def population_similarity(embeddings: np.ndarray, identity: np.ndarray, num_identities: int, *,
                          block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """(mean f64[I], std f64[I]) of each identity's similarity to a generic face population: the
  photos of every other identity, each scored by its best match among the identity's own photos
  (the reduction the attack's `best` applies to a sample).

  embeddings: f32[R, D] unit, the reference photos; identity: int[R] in 0..num_identities-1. The
  R x R similarities are reduced in blocks of `block` photos, never held at once.
  """
  identity = np.asarray(identity)
  if embeddings.ndim != 2 or identity.shape != embeddings.shape[:1]:
    raise ValueError(f"embeddings [R, D] and identity [R] expected, got {embeddings.shape} and "
                     f"{identity.shape}")
  if len(np.unique(identity)) < 2:
    raise ValueError("population similarity needs photos of at least two identities")
  rows = len(identity)
  best = np.full((num_identities, rows), -np.inf)
  for start in range(0, rows, block):
    similarity = np.asarray(embeddings[start:start + block] @ embeddings.T, np.float64)
    np.maximum.at(best, identity[start:start + block], similarity)
  other = identity[None, :] != np.arange(num_identities)[:, None]
  count = other.sum(axis=1)
  mean = np.where(other, best, 0.0).sum(axis=1) / count
  variance = np.where(other, np.square(best - mean[:, None]), 0.0).sum(axis=1) / count
  return mean, np.sqrt(variance)


class Population:
  """Population similarity (above) of the people of a split, with an encoder's embeddings of
  their reference photos: `Population(encoder_workdir, arrays)(split, identity)`, identity
  str|int[I] in the order of an attack's scores."""

  def __init__(self, encoder_workdir: str, arrays):
    run = load_run(encoder_workdir, "face_encoder")
    self.model, self.variables = run.model, run.variables
    self.arrays, self.mesh = arrays, parallel.make_mesh()

  def __call__(self, split: IdentitySplit, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    photos = [split.reference[int(i)] for i in identity.tolist()]
    images = self.arrays.select(np.concatenate(photos)).images
    embeddings = evaluation.embed_images(self.model, self.variables, images, self.mesh)
    rows = np.repeat(np.arange(len(photos)), [len(p) for p in photos])
    return population_similarity(embeddings, rows, len(photos))


def calibrate(scores: np.ndarray, baseline: np.ndarray,
              scale: np.ndarray | None = None) -> np.ndarray:
  """f64[I]: (scores - baseline) / scale per identity (no scale: the difference)."""
  scores = np.asarray(scores, np.float64)
  for name, value in (("baseline", baseline), ("scale", scale)):
    if value is not None and np.shape(value) != scores.shape:
      raise ValueError(f"calibration {name} has shape {np.shape(value)}, scores {scores.shape}")
  if scale is not None and not np.all(np.asarray(scale) > 0):
    raise ValueError("calibration scale must be positive for every identity")
  calibrated = scores - np.asarray(baseline, np.float64)
  return calibrated if scale is None else calibrated / np.asarray(scale, np.float64)


@dataclasses.dataclass(frozen=True)
class ShadowScores:
  """Shadow generators' scores of an attack's people, in its order: scores {variant: f64[K, I]}
  and seen bool[K, I] (shadow k trained on person i)."""
  scores: Mapping[str, np.ndarray]
  seen: np.ndarray


def variant_names(attack_variants: tuple[str, ...] = im.VARIANTS, *,
                  shadows: bool = False) -> list[str]:
  """Every variant variant_scores gives for an attack with `attack_variants` (and shadows)."""
  names = [*attack_variants, *(f"{v}-ref" for v in attack_variants),
           *(f"{v}-pop" for v in SIMILARITY_VARIANTS if v in attack_variants)]
  if shadows:
    names += [f"{v}-{form}" for v in attack_variants for form in ("lira", "lira_offline")]
  return names


def lira_scores(variant: str, target: np.ndarray, shadows: ShadowScores
                ) -> dict[str, np.ndarray]:
  """{"<variant>-lira": online, "<variant>-lira_offline": offline} likelihood-ratio scores f64[I]
  of the target's scores of one variant, with Gaussians fitted over the shadows' (online only
  where some shadow saw someone)."""
  fit = likelihood_ratio.fit_gaussians(shadows.scores[variant], shadows.seen,
                                       transform=LIRA_TRANSFORMS[variant])
  found = {f"{variant}-lira_offline": likelihood_ratio.offline_scores(fit, target)}
  if shadows.seen.any():
    found[f"{variant}-lira"] = likelihood_ratio.online_scores(fit, target)
  return found


def variant_scores(target: AttackScores, *, reference: AttackScores | None = None,
                   population: tuple[np.ndarray, np.ndarray] | None = None,
                   shadows: ShadowScores | None = None) -> dict[str, np.ndarray]:
  """{variant: f64[I]}: the attack's variants, then `-ref` (with a reference generator's scores
  of the same people), `-pop` (with population_similarity in target's order) and `-lira`,
  `-lira_offline` (with shadow generators' scores of the same people) variants."""
  found = dict(target.scores)
  if reference is not None:
    reference = reference.aligned_to(target)
    for variant, scores in target.scores.items():
      found[f"{variant}-ref"] = calibrate(scores, reference.scores[variant])
  if population is not None:
    for variant in SIMILARITY_VARIANTS:
      if variant in target.scores:
        found[f"{variant}-pop"] = calibrate(target.scores[variant], *population)
  if shadows is not None:
    for variant, scores in target.scores.items():
      found.update(lira_scores(variant, scores, shadows))
  return found


def variant_reports(scores: Mapping[str, np.ndarray], is_member: np.ndarray, *,
                    num_resamples: int, seed: int) -> dict[str, dict]:
  """{variant: gmia.metrics.membership_report} (AUC, bootstrap interval, TPR at low FPR)."""
  return {variant: metrics.membership_report(s, is_member, num_resamples=num_resamples, seed=seed)
          for variant, s in scores.items()}


def auc_text(result: dict) -> str:
  """A membership report's AUC with its interval, e.g. "AUC 0.791 [0.685, 0.886]"."""
  low, high = result["auc_interval"]
  return f"AUC {result['auc']:.3f} [{low:.3f}, {high:.3f}]"
