"""Who is exposed: each person's rank and p-value against the non-members, by photos in training.

The seed paper's claim: even in a diverse data set, an over-represented person (many photos) is
at risk. Per person: their score, their rank among everyone scored (1: the highest), and an
empirical p-value against the non-members (each non-member against the other non-members), so
a member with p <= 0.05 is one the attack would single out at a 5% false-positive rate. Per
group of members with the same number of training photos: how many are exposed, and the AUC of
that group against the non-members.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np

from gmia import metrics, viz
from gmia.attacks import identity_membership as im


EXPOSED_P = 0.05


def exposure_table(identity: np.ndarray, is_member: np.ndarray, photos_in_training: np.ndarray,
                   scores: np.ndarray) -> dict[str, np.ndarray]:
  """Columns over people I: identity, group, photos_in_training, score, rank i64[I] (1: the
  highest score; ties share the best rank), p_value f64[I] against the non-members."""
  scores, is_member = np.asarray(scores, np.float64), np.asarray(is_member, bool)
  if not (len(identity) == len(is_member) == len(photos_in_training) == len(scores)):
    raise ValueError("identity, is_member, photos_in_training and scores differ in length")
  if np.sum(~is_member) < 2:
    raise ValueError("p-values need at least two non-members")
  rank = 1 + np.sum(scores[None, :] > scores[:, None], axis=1)
  p_value = im.leave_one_out_p_values(scores, ~is_member)
  return {"identity": np.asarray(identity), "group": np.where(is_member, "member", "non_member"),
          "photos_in_training": np.asarray(photos_in_training, np.int64),
          "score": scores, "rank": rank, "p_value": p_value}


def group_summary(table: Mapping[str, np.ndarray], *, num_resamples: int,
                  seed: int) -> list[dict]:
  """One row per number of training photos among the members (then the non-members): people,
  median rank, exposed (p <= EXPOSED_P), and the group's AUC against the non-members with its
  bootstrap interval."""
  member = table["group"] == "member"
  rows = []
  for photos in np.unique(table["photos_in_training"][member]).tolist():
    group = member & (table["photos_in_training"] == photos)
    chosen = group | ~member
    result = metrics.membership_report(table["score"][chosen], group[chosen],
                                       num_resamples=num_resamples, seed=seed)
    rows.append({"group": "member", "photos_in_training": int(photos), "people": int(group.sum()),
                 "median_rank": float(np.median(table["rank"][group])),
                 "exposed": int(np.sum(table["p_value"][group] <= EXPOSED_P)),
                 "auc": result["auc"], "auc_interval": result["auc_interval"]})
  rows.append({"group": "non_member", "photos_in_training": 0, "people": int((~member).sum()),
               "median_rank": float(np.median(table["rank"][~member])),
               "exposed": int(np.sum(table["p_value"][~member] <= EXPOSED_P))})
  return rows


def save_exposure_figure(path: str, table: Mapping[str, np.ndarray], title: str) -> None:
  """Score against photos in training (non-members at 0), exposed people (p <= 0.05) filled."""
  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  photos = table["photos_in_training"].astype(np.float64)
  jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(photos))  # Separates equal counts.
  exposed = table["p_value"] <= EXPOSED_P
  for group, colour in (("non_member", "tab:grey"), ("member", "tab:red")):
    rows = table["group"] == group
    for filled in (False, True):
      chosen = rows & (exposed == filled)
      axes.scatter(photos[chosen] + jitter[chosen], table["score"][chosen], s=18,
                   facecolors=colour if filled else "none", edgecolors=colour,
                   label=f"{group.replace('_', '-')}s" + (f", p <= {EXPOSED_P}" if filled else ""))
  threshold = np.quantile(table["score"][table["group"] == "non_member"], 1 - EXPOSED_P)
  axes.axhline(threshold, color="grey", linestyle=":", lw=1,
               label=f"non-members' {1 - EXPOSED_P:.0%} quantile")
  axes.set_xlabel("training photos of the person")
  axes.set_ylabel("identity score")
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7, loc="best")
  axes.set_title(title, fontsize=9)
  figure.tight_layout()
  viz.save_figure(path, figure)
