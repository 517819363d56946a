"""Draw a generator's samples by index, as every attack draws them: the faces a report names can
be looked at again.

  generator (any source, gmia.sources) + seed + the samples' indices (or the first `num`)
  -> samples.npz (indices i64[N], images u8[N, R, R, 3]), samples.png (a grid captioned with
     the indices) and, for indices asked for one by one, sample_<i>.png each.

Sample i is a pure function of (seed, i) for every source, and the samples are drawn in chunks
of `chunk_size` as an attack draws them (gmia.attacks.samples.draw): with the attack's generator,
seed and chunk size (its report.json records them) the images are the attack's bit for bit.
"""

from __future__ import annotations

import os
import time

import ml_collections
import numpy as np

from gmia import files, parallel, viz
from gmia.attacks.samples import DEFAULT_CHUNK, draw
from gmia.jobs import page_builders, page_parts
from gmia.sources import config_fields as source_fields, open_source

REPORT_FILE = "samples.json"


def default_config() -> ml_collections.ConfigDict:
  """Every option; attack/configs/sample.py returns it."""
  return ml_collections.ConfigDict({
      **source_fields(),
      "num": 64,            # The first `num` samples, unless:
      "indices": "",        # samples by index, e.g. "1824,2133" (as a report names them).
      "chunk_size": DEFAULT_CHUNK,  # As the attack that named them (its report.json).
      "grid_columns": 8,
      "report_photos": True,  # report.html shows the samples; False: their fingerprints.
  })


def chosen_indices(config: ml_collections.ConfigDict) -> tuple[np.ndarray, bool]:
  """(indices i64[N], whether they were named one by one) of a config; ValueError naming a bad
  entry."""
  text = str(config.indices).strip().strip("()[]")
  if text:
    try:
      indices = np.array([int(part) for part in text.replace(" ", "").split(",") if part],
                         np.int64)
    except ValueError:
      raise ValueError(f"config.indices={config.indices!r} is not a comma-separated list of "
                       "sample indices (e.g. 1824,2133)") from None
    if not len(indices) or indices.min() < 0:
      raise ValueError(f"config.indices={config.indices!r} must name samples 0, 1, ...")
    return indices, True
  if config.num <= 0:
    raise ValueError(f"config.num must be positive, got {config.num}")
  return np.arange(config.num, dtype=np.int64), False


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Draws the samples into `workdir`; returns the contents of samples.json."""
  started = time.perf_counter()
  indices, named = chosen_indices(config)
  if config.chunk_size <= 0:
    raise ValueError(f"config.chunk_size must be positive, got {config.chunk_size}")
  source = open_source(config)
  if source.num_available is not None and indices.max() >= source.num_available:
    raise ValueError(f"{source.spec} holds {source.num_available} samples; asked for sample "
                     f"{int(indices.max())}")
  mesh = parallel.make_mesh()
  devices = mesh.shape[parallel.DATA_AXIS]
  chunk = -(-config.chunk_size // devices) * devices
  images = draw(source, indices, mesh, chunk)
  os.makedirs(workdir, exist_ok=True)
  files.save_npz(os.path.join(workdir, "samples.npz"), {"indices": indices, "images": images})
  upscale = max(1, 96 // source.resolution)
  viz.save_grid(os.path.join(workdir, "samples.png"), images,
                ncols=min(config.grid_columns, len(images)),
                labels=[f"sample {i}" for i in indices.tolist()], upscale=upscale)
  if named:
    for index, image in zip(indices.tolist(), images):
      viz.save_png(os.path.join(workdir, f"sample_{index}.png"), image)
  summary = {"generator": source.fingerprint, "spec": source.spec, "seed": config.seed,
             "chunk_size": chunk, "indices": indices.tolist(), "resolution": source.resolution}
  summary.update(page_builders.sample_extras(summary))
  summary["provenance"] = page_parts.provenance(
      workdir, config, time.perf_counter() - started, {"generator": source.fingerprint})
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  page_parts.write_page(workdir, page_builders.sample_page, summary,
                           config.report_photos)
  return summary
