"""Image grids and report figures (ROC curves, faces beside their nearest matches), written as
PNG files atomically (temporary file, then rename), so an interrupted run never leaves a
half-written figure behind."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # Files only: no display is needed or wanted.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from gmia import metrics  # noqa: E402
from gmia.files import write_atomic  # noqa: E402

LOG_FPR_MIN = 1e-4  # Where the log-FPR panel's curves start (FPR 0 is drawn there).


def to_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 images pass through; float images in [-1, 1] map to [0, 255]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if not np.all(np.isfinite(images)):
    raise ValueError("images contain NaN or infinite values")
  return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, ncols: int, labels: Sequence[str] | None = None,
         pad: int = 2, upscale: int = 1) -> np.ndarray:
  """Tiles images: u8[N,H,W,3] (or f32 in [-1,1]) -> u8[rows*(H+pad+label), ncols*(W+pad), 3].

  With `labels`, each tile gets a caption strip under it; `upscale` enlarges small faces
  (nearest neighbour, so pixels stay honest).
  """
  images = to_uint8(images)
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected images of shape [N, H, W, 3], got {images.shape}")
  if len(images) == 0:
    raise ValueError("no images to tile")
  if labels is not None and len(labels) != len(images):
    raise ValueError(f"{len(labels)} labels for {len(images)} images")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, _ = images.shape
  label_h = 12 if labels is not None else 0
  rows = -(-n // ncols)
  canvas = np.full((rows * (h + pad + label_h) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, ncols)
    y, x = pad + r * (h + pad + label_h), pad + c * (w + pad)
    canvas[y:y + h, x:x + w] = images[i]
  if labels is None:
    return canvas
  picture = Image.fromarray(canvas)
  draw = ImageDraw.Draw(picture)
  for i, text in enumerate(labels):
    r, c = divmod(i, ncols)
    draw.text((pad + c * (w + pad), pad + r * (h + pad + label_h) + h), text, fill=(0, 0, 0))
  return np.asarray(picture)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a u8[H,W,3] image as PNG without ever leaving a partial file at `path`."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  write_atomic(path, buffer.getvalue())


def save_grid(path: str, images: np.ndarray, ncols: int,
              labels: Sequence[str] | None = None, upscale: int = 1) -> None:
  """Tiles `images` (see `grid`) and writes the PNG atomically."""
  save_png(path, grid(images, ncols, labels, upscale=upscale))


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
  first = _tiles(to_uint8(generated), side)
  rest = _tiles(to_uint8(photos.reshape((-1,) + photos.shape[2:])), side).reshape(
      m, k, side, side, 3)
  tiles = np.concatenate([first[:, None], rest], axis=1)
  labels = [text for row in range(m) for text in [captions[row], *photo_captions[row]]]
  save_grid(path, tiles.reshape((-1,) + tiles.shape[2:]), ncols=k + 1, labels=labels)


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
