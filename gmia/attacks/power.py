"""The attack's power against the number of generated samples, from one stream.

Sample i of a generator is the same whatever the run (gmia.sources), so the first n samples of a
run of N are a run of n: the stream keeps its evidence after each count asked for
(identity_membership.stream's keep_at), and every variant's AUC with its bootstrap interval is
read at each count from what was kept, without drawing a sample twice: each count's numbers are
those of a run of that many samples (its density bandwidths chosen on the held-out samples such a
run would draw, the ones among its first samples).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from gmia import metrics, viz
from gmia.attacks import identity_membership as im

FIGURE_FILE = "power.png"


def counts(asked: Sequence[int], num_samples: int, chunk_size: int) -> tuple[int, ...]:
  """The sample counts to keep the evidence at: `asked` below num_samples, sorted; ValueError
  for a count that is not a positive multiple of the chunk size."""
  odd = [n for n in asked if n <= 0 or n % chunk_size]
  if odd:
    raise ValueError(f"power_samples must be positive multiples of the chunk size {chunk_size} "
                     f"(config.chunk_size), got {odd}")
  return tuple(sorted({int(n) for n in asked if n < num_samples}))


def curve(state_dir: str, kept: Sequence[int], refs: im.References, held_out_ids: np.ndarray,
          held_out: np.ndarray, *, num_resamples: int, seed: int) -> list[dict]:
  """[{"num_samples": n, "usable_samples", "metrics": {variant: membership report}}] at each
  kept count, over the members and the population of `refs`; held_out f32[M, D]: the
  embeddings of the samples held_out_ids i64[M] (the attack's first samples)."""
  tested = refs.is_member | refs.in_population
  rows = []
  for n in kept:
    evidence = im.kept_evidence(state_dir, n)
    density = im.density(evidence, refs, held_out[held_out_ids < n])
    rows.append({"num_samples": int(n), "usable_samples": int(evidence.num_samples),
                 "metrics": {v: metrics.membership_report(
                     im.scores(evidence, v, density)[tested], refs.is_member[tested],
                     num_resamples=num_resamples, seed=seed) for v in im.VARIANTS}})
  return rows


def save_figure(workdir: str, rows: list[dict], title: str) -> None:
  """power.png: each variant's AUC (with its interval) against the number of samples."""
  figure, axes = plt.subplots(figsize=(6, 4.2))
  x = np.array([row["num_samples"] for row in rows], np.float64)
  for variant in rows[0]["metrics"]:
    auc = np.array([row["metrics"][variant]["auc"] for row in rows], np.float64)
    interval = np.array([row["metrics"][variant]["auc_interval"] for row in rows], np.float64)
    axes.plot(x, auc, marker="o", label=variant)
    axes.fill_between(x, interval[:, 0], interval[:, 1], alpha=0.12, lw=0)
  axes.axhline(0.5, color="grey", linestyle=":", lw=1)
  axes.set_xscale("log")
  axes.set_xlabel("generated samples")
  axes.set_ylabel("AUC (bands: 95% bootstrap intervals)")
  axes.set_ylim(0, 1)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  axes.set_title(title, fontsize=9)
  figure.tight_layout()
  viz.save_figure(os.path.join(workdir, FIGURE_FILE), figure)
