"""What every gmia tfds builder shares: the feature spec, preparation, and bulk reading.

Features are plain tensors (no tfds.features.Image) so that building and reading need no
TensorFlow; data are written as array_record for random access.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from gmia.data.arrays import FaceArrays

FILE_FORMAT = "array_record"
_READ_BLOCK = 1024


def face_features(resolution: int) -> tfds.features.FeaturesDict:
  """{"image": u8[R, R, 3], "identity": i64, "photo_id": i64}."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(resolution, resolution, 3), dtype=np.uint8),
      "identity": tfds.features.Tensor(shape=(), dtype=np.int64),
      "photo_id": tfds.features.Tensor(shape=(), dtype=np.int64),
  })


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None) -> None:
  """Builds the data set once; later calls find it in `data_dir` and return at once.

  Jobs that start together on one machine take turns on a lock file beside the data set: the
  first builds it, the others then find it built (two builds at once would race to rename their
  finished folder into place, and the second would fail). A builder made before the data set was
  built does not know its files: read with a fresh one.
  """
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  lock_path = os.fspath(builder.data_dir).rstrip("/") + ".lock"
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with open(lock_path, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if os.path.isdir(builder.data_dir):
      return  # Built while this job waited, or before.
    logging.info("preparing %s in %s", builder.info.full_name, builder.data_dir)
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints two lines of its own.
      builder.download_and_prepare(file_format=FILE_FORMAT, download_config=config)


def read_all(builder: tfds.core.DatasetBuilder, split: str = "train") -> FaceArrays:
  """Reads a prepared split into memory, in blocks."""
  source = builder.as_data_source(split=split)
  n = len(source)
  if n == 0:
    raise ValueError(f"{builder.info.full_name} split {split!r} is empty")
  images, identity, photo_id = [], [], []
  for start in range(0, n, _READ_BLOCK):
    block = source.__getitems__(list(range(start, min(n, start + _READ_BLOCK))))
    images.append(np.stack([example["image"] for example in block]))
    identity.append(np.array([example["identity"] for example in block], np.int64))
    photo_id.append(np.array([example["photo_id"] for example in block], np.int64))
  return FaceArrays(np.concatenate(images), np.concatenate(identity), np.concatenate(photo_id))
