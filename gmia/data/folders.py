"""Face photo collections on local disk, as tfds builders: identity folders, CelebA, LFW, VGGFace2.

None of the real sets can be downloaded by gmia: put the files in a folder (the builder's
`manual_dir`) in the layout below. Every photo is decoded by `gmia.data.photos` (EXIF orientation,
16-bit, palette and transparent photos; hidden files ignored), optionally cropped to the face,
centre-cropped to a square and resized to the requested resolution. An unreadable file is skipped
with a warning naming it and the reason. Identity ids are the positions of the identity names
in sorted order (`identity_names` gives them back); photo ids are positions in the sorted file list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from gmia.data import photos, tfds_io

# Face region of CelebA's aligned 178x218 photos (x0, y0, x1, y1), as commonly used for GANs.
_CELEBA_FACE_BOX = (15, 40, 163, 188)

INSTRUCTIONS = {
    "identity_folder": "Put one folder per person under the manual_dir: "
                       "<manual_dir>/<identity>/<photo>.jpg (extensions: "
                       f"{', '.join(photos.EXTENSIONS)}).",
    "lfw": "Download and extract LFW (lfw.tgz or lfw-deepfunneled.tgz) into the manual_dir so that "
           "<manual_dir>/lfw/<Person_Name>/<Person_Name>_0001.jpg exists.",
    "vggface2": "Download VGGFace2 (CC BY-NC 4.0) and extract it into the manual_dir so that "
                "<manual_dir>/train/n000002/0001_01.jpg (and optionally <manual_dir>/test/...) "
                "exist.",
    "celeb_a": "Download CelebA's aligned photos and identity file into the manual_dir: "
               "<manual_dir>/img_align_celeba/000001.jpg ... and <manual_dir>/identity_CelebA.txt.",
}


def _lfw(root: str) -> list[tuple[str, str]]:
  for sub in ("lfw", "lfw-deepfunneled", "lfw_funneled"):
    if os.path.isdir(os.path.join(root, sub)):
      return photos.identity_photos(os.path.join(root, sub))
  return photos.identity_photos(root)


def _vggface2(root: str) -> list[tuple[str, str]]:
  splits = [s for s in ("train", "test") if os.path.isdir(os.path.join(root, s))]
  if not splits:
    raise FileNotFoundError(f"no train/ or test/ folder in {root}. {INSTRUCTIONS['vggface2']}")
  # VGGFace2's train and test identities are disjoint; gmia makes its own split by identity.
  return sorted(item for s in splits for item in photos.identity_photos(os.path.join(root, s)))


def _celeb_a(root: str) -> list[tuple[str, str]]:
  labels, images = os.path.join(root, "identity_CelebA.txt"), os.path.join(root, "img_align_celeba")
  for needed in (labels, images):
    if not os.path.exists(needed):
      raise FileNotFoundError(f"{needed} is missing. {INSTRUCTIONS['celeb_a']}")
  items = []
  with open(labels) as handle:
    for line_number, line in enumerate(handle, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"{labels}:{line_number}: expected '<file> <identity>', got {line!r}")
      items.append((os.path.join(images, parts[0]), parts[1]))
  return sorted(items)


LAYOUTS: dict[str, Callable[[str], list[tuple[str, str]]]] = {
    "identity_folder": photos.identity_photos, "lfw": _lfw, "vggface2": _vggface2,
    "celeb_a": _celeb_a}
CROP_BOXES = {"celeb_a": _CELEBA_FACE_BOX}


def collection_photos(layout: str, root: str) -> list[tuple[str, str]]:
  """(path, identity name) pairs of a collection, sorted; clear errors for a missing folder."""
  if layout not in LAYOUTS:
    raise ValueError(f"unknown photo layout {layout!r}; known: {sorted(LAYOUTS)}")
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(f"manual_dir {root!r} does not exist. {INSTRUCTIONS[layout]}")
  items = LAYOUTS[layout](root)
  if not items:
    raise ValueError(f"no photos ({'/'.join(photos.EXTENSIONS)}) found in {root}. "
                     f"{INSTRUCTIONS[layout]}")
  return items


def identity_names(layout: str, root: str) -> list[str]:
  """Identity names in id order: `identity_names(...)[i]` is the person with identity i."""
  return sorted({name for _, name in collection_photos(layout, root)})


def fit_photo(image: np.ndarray, resolution: int,
              box: tuple[int, int, int, int] | None) -> np.ndarray:
  """u8[H, W, 3] -> u8[R, R, 3]: crop to `box` (x0, y0, x1, y1), centre square, resize (Lanczos)."""
  picture = Image.fromarray(image)
  if box is not None:
    picture = picture.crop(box)
  w, h = picture.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  picture = picture.crop((left, top, left + side, top + side))
  picture = picture.resize((resolution, resolution), Image.LANCZOS)
  return np.asarray(picture, np.uint8)


def load_photo(path: str, resolution: int, box: tuple[int, int, int, int] | None) -> np.ndarray:
  """Decodes one photo and fits it -> u8[R, R, 3]; raises photos.UnreadablePhoto naming the file."""
  return fit_photo(photos.decode(path), resolution, box)


@dataclasses.dataclass(kw_only=True)
class PhotoFoldersConfig(tfds.core.BuilderConfig):
  layout: str = "identity_folder"
  root: str = ""
  resolution: int = 64


class FacePhotoFolders(tfds.core.GeneratorBasedBuilder):
  """Local photo collections: {"image": u8[R,R,3], "identity": i64, "photo_id": i64}."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Photos decoded by gmia.data.photos: EXIF orientation, 16-bit scaled, "
                            "transparency on white, hidden files ignored."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "\n".join(f"{k}: {v}" for k, v in INSTRUCTIONS.items())

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds_io.face_features(self.builder_config.resolution),
        supervised_keys=("image", "identity"))

  def _split_generators(self, dl_manager):
    del dl_manager  # The root is in the config; nothing is downloaded.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config
    items = collection_photos(config.layout, config.root)
    ids = {name: i for i, name in enumerate(sorted({name for _, name in items}))}
    box = CROP_BOXES.get(config.layout)
    reader = photos.Reader()
    for photo_id, (path, name) in enumerate(items):
      image = reader(path)
      if image is None:
        continue
      yield photo_id, {"image": fit_photo(image, config.resolution, box),
                       "identity": np.int64(ids[name]), "photo_id": np.int64(photo_id)}
    if len(reader.skipped) == len(items):
      first = reader.skipped[0]
      raise ValueError(f"every one of the {len(items)} photos in {config.root} was unreadable "
                       f"(the first, {first.path}: {first.reason})")
    logging.info("%s in %s: %d photos used, %d skipped", config.layout, config.root,
                 len(items) - len(reader.skipped), len(reader.skipped))


def make_builder(layout: str, root: str | None, data_dir: str, *,
                 resolution: int = 64) -> FacePhotoFolders:
  """The builder of the collection at `root` in `layout`, prepared under `data_dir`."""
  collection_photos(layout, root or "")  # Fails early, with instructions, when the files are missing.
  root = os.path.abspath(root)
  digest = hashlib.sha1(root.encode()).hexdigest()[:10]
  config = PhotoFoldersConfig(name=f"{layout}_r{resolution}_{digest}", layout=layout, root=root,
                              resolution=resolution, description=f"{layout} photos in {root}")
  return FacePhotoFolders(data_dir=data_dir, config=config)
