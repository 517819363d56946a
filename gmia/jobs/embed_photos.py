"""Embed a folder of photos with a face matcher, and look at what the matcher saw.

photos_dir is a flat folder of photos, or identity folders DIR/<person>/<photo>. Writes:
  embeddings.npz  paths str[N], identity str[N] (the folder name; "" for a flat folder),
                  aligned u8[N, S, S, 3] (the crops the matcher saw), embeddings f32[N, D] unit;
  faces.png       the aligned crops, captioned;
  skipped.csv     photos that could not be read or showed no usable face, with the reason;
  with identity folders: similarity.png (the photo-by-photo cosine matrix) and in report.json
  the same-person and different-person similarity ranges (does every same-person pair beat
  every different-person pair?).
"""

from __future__ import annotations

import os
import time

import matplotlib

matplotlib.use("Agg")  # Files only.
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from gmia import files, fingerprint, parallel, viz  # noqa: E402

from gmia.data import photos as photo_files  # noqa: E402
from gmia.faces import embedder as embedder_lib  # noqa: E402
from gmia.jobs import page_builders, page_parts  # noqa: E402
from gmia.workdir import exclusive  # noqa: E402

REPORT_FILE = "report.json"


def default_config() -> ml_collections.ConfigDict:
  """Every option; attack/configs/embed_photos.py returns it."""
  return ml_collections.ConfigDict({
      "photos_dir": "", **embedder_lib.config_fields(),
      "report_photos": True,  # report.html shows the faces; False: their fingerprints.
  })


def similarity_ranges(embeddings: np.ndarray, identity: np.ndarray) -> dict[str, float]:
  """Min / max cosine of same-person and of different-person pairs of unit embeddings."""
  cosine = embeddings @ embeddings.T
  upper = np.triu(np.ones_like(cosine, bool), k=1)
  same = identity[:, None] == identity[None, :]
  result = {}
  for name, pairs in (("same_person", upper & same), ("different_person", upper & ~same)):
    values = cosine[pairs]
    result[f"{name}_min"] = float(values.min()) if values.size else float("nan")
    result[f"{name}_max"] = float(values.max()) if values.size else float("nan")
    result[f"{name}_pairs"] = int(values.size)
  return result


@exclusive
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Embeds config.photos_dir; writes the files above into `workdir`."""
  started = time.perf_counter()
  paths, identity = photo_files.folder_photos(config.photos_dir)
  embedder = embedder_lib.load_embedder(config)
  person_of = dict(zip(paths, identity))
  decoded = photo_files.Reader(strict=embedder.strict).read(paths)
  embedded = embedder_lib.embed_photos(embedder, decoded.images, decoded.paths,
                                       parallel.make_mesh())
  kept = [decoded.paths[i] for i in embedded.kept]
  people = np.asarray([person_of[p] for p in kept])
  os.makedirs(workdir, exist_ok=True)
  files.save_npz(os.path.join(workdir, "embeddings.npz"), {
      "paths": np.asarray(kept), "identity": people, "aligned": embedded.crops,
      "embeddings": embedded.embeddings.astype(np.float32)})
  skipped = [(s.path, s.reason) for s in decoded.skipped] + embedded.skipped
  files.write_csv(os.path.join(workdir, "skipped.csv"),
                          {"photo": [p for p, _ in skipped], "reason": [r for _, r in skipped]})
  if kept:
    captions = [f"{(p + ' ') if p else ''}{os.path.basename(path)}"[:18]
                for p, path in zip(people, kept)]
    viz.save_grid(os.path.join(workdir, "faces.png"), embedded.crops,
                  ncols=min(8, len(kept)), labels=captions)
  result = {"photos": len(paths), "used": len(kept), "skipped": len(skipped),
            "matcher": embedder.matcher.name, "align": embedder.align,
            "embedding_size": int(embedded.embeddings.shape[1])}
  if len(set(people.tolist()) - {""}) > 1:
    result.update(similarity_ranges(embedded.embeddings, people))
    result["separated"] = result["same_person_min"] > result["different_person_max"]
    _similarity_figure(os.path.join(workdir, "similarity.png"), embedded.embeddings, people)
  result.update(page_builders.embed_photos_extras(result))
  result["provenance"] = page_parts.provenance(
      workdir, config, time.perf_counter() - started,
      {"matcher": embedder.fingerprint, "photos": fingerprint.tree_digest(embedded.crops)})
  files.write_json(os.path.join(workdir, REPORT_FILE), result)
  page_parts.write_page(workdir, page_builders.embed_photos_page, result,
                           config.report_photos)
  return result


def _similarity_figure(path: str, embeddings: np.ndarray, identity: np.ndarray) -> None:
  """The photo-by-photo cosine matrix, photos grouped by person."""
  cosine = embeddings @ embeddings.T
  figure, axes = plt.subplots(figsize=(1.5 + 0.35 * len(identity), 1 + 0.35 * len(identity)))
  shown = axes.imshow(cosine, vmin=-1, vmax=1, cmap="RdBu_r")
  axes.set_xticks(range(len(identity)), identity, rotation=90, fontsize=7)
  axes.set_yticks(range(len(identity)), identity, fontsize=7)
  for boundary in np.flatnonzero(identity[1:] != identity[:-1]):
    axes.axhline(boundary + 0.5, color="k", lw=0.8)
    axes.axvline(boundary + 0.5, color="k", lw=0.8)
  figure.colorbar(shown, ax=axes, label="cosine similarity")
  axes.set_title("same person: blocks on the diagonal")
  figure.tight_layout()
  viz.save_figure(path, figure)
