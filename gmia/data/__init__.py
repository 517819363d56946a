"""Face data with identity labels: builders, the identity split, and the input pipeline.

Every source yields {"image": u8[H, W, 3], "identity": i64, "photo_id": i64}.
"""

from __future__ import annotations

import os

import jax

from gmia import parallel
from gmia.data import folders, synthetic, tfds_io
from gmia.data.arrays import FaceArrays

DATASETS = ("synthetic_faces",) + tuple(sorted(folders.LAYOUTS))
DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


def load(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
         resolution: int = 64, **kwargs) -> FaceArrays:
  """Prepares (once) and reads a data set by name into memory.

  name: "synthetic_faces" (the embedded default; kwargs identities, photos, seed) or a local
  collection in `manual_dir`: "identity_folder", "celeb_a", "lfw", "vggface2".
  """
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  if name == "synthetic_faces":
    make = lambda: synthetic.make_builder(data_dir, resolution=resolution, **kwargs)
  elif name in folders.LAYOUTS:
    if kwargs:
      raise ValueError(f"{name} takes no options besides resolution and manual_dir, got {kwargs}")
    make = lambda: folders.make_builder(name, manual_dir, data_dir, resolution=resolution)
  else:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
  # One process of a multi-process job prepares the files; the others read them once it is
  # done, every one with a builder made after (gmia.data.tfds_io.prepare).
  builder = make()
  if jax.process_index() == 0:
    tfds_io.prepare(builder)
  parallel.barrier(f"data {builder.info.full_name}")
  return tfds_io.read_all(make())


__all__ = ["DATASETS", "FaceArrays", "load"]
