"""Report files of a membership attack: report.json, scores.csv, roc.png, matches.png.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written report behind.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # Files only: no display is needed or wanted.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from gmia import metrics, viz  # noqa: E402
from gmia.files import write_atomic  # noqa: E402

LOG_FPR_MIN = 1e-4  # Where the log-FPR panel's curves start (FPR 0 is drawn there).


def write_scores_csv(path: str, columns: Mapping[str, Sequence]) -> None:
  """One row per target identity; `columns` maps header -> values (all the same length)."""
  lengths = {len(v) for v in columns.values()}
  if len(lengths) != 1:
    raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(list(columns))
  writer.writerows(zip(*columns.values()))
  write_atomic(path, buffer.getvalue())


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> plt.Figure:
  """ROC curves, linear and log-FPR side by side (low-FPR behaviour is what matters).

  curves: label -> (scores f64[N], labels bool[N]); members are positives. Chance (TPR = FPR) is
  drawn point by point, so it stays the diagonal on the log axis too; the log panel greys the
  FPRs below 1 / (number of non-members), where no threshold separates anything.
  """
  figure, (linear, log) = plt.subplots(1, 2, figsize=(10, 4.4))
  for label, (scores, labels) in curves.items():
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    name = f"{label} (AUC {metrics.auc(scores, labels):.3f})"
    linear.plot(fpr, tpr, label=name)
    log.step(np.maximum(fpr, LOG_FPR_MIN), tpr, where="post", label=name)
  chance = np.logspace(np.log10(LOG_FPR_MIN), 0, 200)
  for axes in (linear, log):
    axes.plot(chance, chance, color="grey", linestyle=":", label="chance")
    axes.set_xlabel("false positive rate (non-members called members)")
    axes.set_ylabel("true positive rate (members found)")
    axes.grid(alpha=0.3)
  unresolved = [
      log.axvspan(LOG_FPR_MIN, 1 / negatives, color="grey", alpha=0.15, lw=0,
                  label=f"FPR < 1/{negatives}: not resolved by {negatives} non-members")
      for negatives in sorted({int(np.sum(~np.asarray(labels, bool)))
                               for _, labels in curves.values()})]
  log.set_xscale("log")
  log.set_xlim(1e-3, 1)
  linear.legend(loc="lower right", fontsize=8)
  log.legend(handles=unresolved, loc="lower right", fontsize=8)
  figure.suptitle(title)
  figure.tight_layout()
  return figure


def save_figure(path: str, figure: plt.Figure) -> None:
  """Writes `figure` as a PNG (atomically) and closes it."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110)
  plt.close(figure)
  write_atomic(path, buffer.getvalue())


def plot_roc(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
  """Saves `roc_figure(curves, title)` as a PNG."""
  save_figure(path, roc_figure(curves, title))


def save_matches(path: str, generated: np.ndarray, photos: np.ndarray, captions: Sequence[str],
                 photo_captions: Sequence[Sequence[str]]) -> None:
  """Rows of one face followed by its nearest faces (a sample and the photos nearest to it, or a
  person and their nearest samples), captioned.

  generated: u8|f32[M, H, W, 3]; photos: u8|f32[M, k, h, w, 3] (any size: every tile is shown
  at the larger side, at least 96 px); captions: M strings; photo_captions: M lists of k
  strings (identity and similarity).
  """
  m, k = photos.shape[:2]
  if len(generated) != m or len(captions) != m or len(photo_captions) != m:
    raise ValueError("generated faces, photos and captions must have the same number of rows")
  side = max(96, generated.shape[1], photos.shape[2])
  first = _tiles(viz.to_uint8(generated), side)
  rest = _tiles(viz.to_uint8(photos.reshape((-1,) + photos.shape[2:])), side).reshape(
      m, k, side, side, 3)
  tiles = np.concatenate([first[:, None], rest], axis=1)
  labels = [text for row in range(m) for text in [captions[row], *photo_captions[row]]]
  viz.save_grid(path, tiles.reshape((-1,) + tiles.shape[2:]), ncols=k + 1, labels=labels)


def _tiles(images: np.ndarray, side: int) -> np.ndarray:
  """u8[N, H, W, 3] -> u8[N, side, side, 3]: integer upscales by nearest neighbour (pixels stay
  honest), anything else by Lanczos."""
  if images.shape[1] == side:
    return images
  if side % images.shape[1] == 0:
    factor = side // images.shape[1]
    return images.repeat(factor, axis=1).repeat(factor, axis=2)
  return np.stack([np.asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS))
                   for image in images])
