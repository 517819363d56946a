"""The main job: every stage on the embedded default data, cached in the workdir.

  python -m attack.run_all --workdir=runs/demo

Stage 1 (data): render the synthetic faces (once, into the tfds data_dir), split identities into
members / non-members / shadow / encoder, save `split.json` and `data_overview.png` (rows:
identities; columns: their photos, reference photos marked "ref").
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from gmia import progress, viz
from gmia.data import run_data

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "main_job.py"),
    "Main job config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where every stage keeps its results.")


def data_overview(arrays, split, identities: int, path: str) -> None:
  """Saves a grid: member identities in rows, their training then reference photos in columns."""
  rows, labels = [], []
  for identity in split.identities("members")[:identities].tolist():
    train, reference = split.train[identity][:4], split.reference[identity][:2]
    rows.append(arrays.select(np.concatenate([train, reference])).images)
    labels += [f"id {identity}"] + [""] * (len(train) - 1) + ["ref"] * len(reference)
  upscale = max(1, 96 // arrays.resolution)
  viz.save_grid(path, np.concatenate(rows), ncols=len(rows[0]), labels=labels, upscale=upscale)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  progress.quiet_library_logs()
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  arrays, split = run_data.load_for_run(config.data, workdir)
  overview = os.path.join(workdir, "data_overview.png")
  data_overview(arrays, split, config.overview_identities, overview)
  counts = {g: len(split.identities(g)) for g in ("members", "non_members", "shadow", "encoder")}
  print(f"data: {len(arrays)} photos of {arrays.num_identities} identities at "
        f"{arrays.resolution} px; " + ", ".join(f"{g} {n}" for g, n in counts.items()))
  print(f"split: {os.path.join(workdir, run_data.SPLIT_FILE)}; overview: {overview}")
  logging.info("done")


if __name__ == "__main__":
  app.run(main)
