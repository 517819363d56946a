"""Data for a run: the data-set config block shared by every trainer and attack, and its loading.

Every run saves the identity split it used as `split.json` in its workdir, so any later stage
(or a resumed run) sees exactly the same people in the same roles.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import logging

import gmia.data
from gmia.data.arrays import FaceArrays
from gmia.data.split import IdentitySplit, make_split

SPLIT_FILE = "split.json"


def default_config() -> ml_collections.ConfigDict:
  """The `data` block of every config: the embedded synthetic faces and a split of them."""
  return ml_collections.ConfigDict({
      "name": "synthetic_faces",
      "data_dir": "",          # "" means ~/tensorflow_datasets.
      "manual_dir": "",        # Folder with the files of a local collection.
      "resolution": 64,
      "identities": 1000,      # synthetic_faces only.
      "photos": 20,            # synthetic_faces only.
      "seed": 0,               # synthetic_faces only: which faces.
      "split": {
          "path": "",          # An existing split.json to reuse instead of making one.
          "seed": 0,
          "members": 100,
          "non_members": 100,
          "shadow": 100,
          "encoder": -1,       # -1: every identity left over.
          "reference_photos": 5,
          "min_train_photos": 1,
          "max_train_photos": -1,  # -1: all of them.
      },
  })


def load_dataset(config: ml_collections.ConfigDict) -> FaceArrays:
  """Loads the data set a `data` config block names."""
  extra = {}
  if config.name == "synthetic_faces":
    extra = {"identities": config.identities, "photos": config.photos, "seed": config.seed}
  return gmia.data.load(config.name, data_dir=config.data_dir or None,
                        manual_dir=config.manual_dir or None, resolution=config.resolution,
                        **extra)


def split_for(config: ml_collections.ConfigDict, arrays: FaceArrays) -> IdentitySplit:
  """The identity split a `data` config block describes (made, or read from split.path)."""
  s = config.split
  if s.path:
    split = IdentitySplit.load(s.path)
    known = np.isin(np.concatenate([split.train_photos(g) for g in ("members", "encoder")]),
                    arrays.photo_id)
    if not np.all(known):
      raise ValueError(f"split {s.path} names photos that data set {config.name} does not have: "
                       "it was made for another data set")
    return split
  return make_split(arrays, seed=s.seed, members=s.members, non_members=s.non_members,
                    shadow=s.shadow, encoder=None if s.encoder < 0 else s.encoder,
                    reference_photos=s.reference_photos, min_train_photos=s.min_train_photos,
                    max_train_photos=None if s.max_train_photos < 0 else s.max_train_photos)


def load_for_run(config: ml_collections.ConfigDict,
                 workdir: str) -> tuple[FaceArrays, IdentitySplit]:
  """Loads the data and the split, and pins the split to `workdir/split.json`.

  A workdir that already holds a different split (the config changed under a run) is an error.
  """
  arrays = load_dataset(config)
  split = split_for(config, arrays)
  path = os.path.join(workdir, SPLIT_FILE)
  if os.path.exists(path):
    if IdentitySplit.load(path).to_json() != split.to_json():
      raise ValueError(f"{path} holds another identity split than the config asks for: "
                       "use a fresh --workdir or the original data config")
  else:
    split.save(path)
  logging.info("data %s: %d photos of %d identities; members %d, non-members %d, shadow %d, "
               "encoder %d", config.name, len(arrays), arrays.num_identities,
               *(len(split.identities(g)) for g in ("members", "non_members", "shadow", "encoder")))
  return arrays, split
