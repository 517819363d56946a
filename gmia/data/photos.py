"""Photo files as a user sees them: listing folders of photos and decoding one to u8[H, W, 3] RGB.

Every place that reads user photos goes through here, so each of them handles the same files the
same way: EXIF orientation applied; 16-bit samples scaled to 8 bits (the high byte, as Pillow
already does for 16-bit RGB); transparent areas composited onto a stated background; palette,
1-bit, L, LA, CMYK and the rest converted to RGB. A file that cannot be decoded (corrupt,
truncated, zero bytes, not an image, too many pixels) is named with the reason, then skipped with
a warning or, for strict callers, raised. Hidden files and folders named like photos are never
listed. Decoding keeps the full resolution; cropping and resizing are the caller's step.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions listed as photos (any case), those of them that this Pillow can read.
EXTENSIONS = tuple(extension
                   for extension in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
                   if extension in Image.registered_extensions())
# What transparent pixels become: white, the page behind a photo in most viewers and documents.
BACKGROUND = (255, 255, 255)
# Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS, about 179 Mpixels): larger is refused.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# Modes of 16-bit (or wider integer) single-channel pixels, read as 16-bit samples.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class UnreadablePhoto(ValueError):
  """A photo file that cannot be decoded; the message names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path, self.reason = path, reason


class Skipped(NamedTuple):
  """A photo file left out and why: one row of a skipped.csv."""
  path: str
  reason: str


def is_photo_name(name: str) -> bool:
  """A visible file name with a photo extension (`.DS_Store`, `._x.jpg` are hidden)."""
  return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def files_in(folder: str) -> list[str]:
  """Paths of the photo files directly in `folder`, sorted; sub-folders and hidden files ignored."""
  with os.scandir(folder) as entries:
    return sorted(entry.path for entry in entries if is_photo_name(entry.name) and entry.is_file())


def identity_photos(root: str) -> list[tuple[str, str]]:
  """(path, identity) for every photo in root/<identity>/, sorted by identity then file name.

  Hidden folders and files directly in `root` are ignored; an identity without photos is absent.
  """
  with os.scandir(root) as entries:
    people = sorted((entry.name, entry.path) for entry in entries
                    if not entry.name.startswith(".") and entry.is_dir())
  return [(path, name) for name, folder in people for path in files_in(folder)]


def folder_photos(photos_dir: str) -> tuple[list[str], list[str]]:
  """(paths, identity) of a flat folder (identity "") or of identity folders."""
  if not photos_dir or not os.path.isdir(photos_dir):
    raise ValueError(f"{photos_dir!r} is not a folder of photos")
  flat = files_in(photos_dir)
  if flat:
    return flat, [""] * len(flat)
  listed = identity_photos(photos_dir)
  if not listed:
    raise ValueError(f"no photos in {photos_dir}, nor in identity folders {photos_dir}/<person>/")
  return [path for path, _ in listed], [person for _, person in listed]


def decode(path: str, *, background: tuple[int, int, int] = BACKGROUND,
           max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decodes one photo file -> u8[H, W, 3] RGB, upright, at full resolution.

  Raises UnreadablePhoto (naming the file and the reason) for a file that cannot be decoded or
  has more than `max_pixels` pixels (a decompression bomb is refused before it is decoded).
  """
  try:
    size = os.path.getsize(path)
  except OSError as error:
    raise UnreadablePhoto(path, f"cannot read: {error}") from error
  return _decode(path, path, size, background, max_pixels)


def decode_bytes(data: bytes, name: str, *, background: tuple[int, int, int] = BACKGROUND,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """`decode` of a photo's bytes (e.g. an archive member); `name` names it in errors."""
  return _decode(io.BytesIO(data), name, len(data), background, max_pixels)


def _decode(source: Any, name: str, size: int, background: tuple[int, int, int],
            max_pixels: int) -> np.ndarray:
  try:
    if size == 0:
      raise UnreadablePhoto(name, "empty file (0 bytes)")
    with warnings.catch_warnings():
      # Pillow warns from half its hard limit on; the limit here is max_pixels.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(source) as picture:
        width, height = picture.size
        if width * height > max_pixels:
          raise UnreadablePhoto(name, f"refused as a possible decompression bomb: {width}x{height}"
                                      f" = {width * height} pixels, over the limit of {max_pixels}")
        picture.load()
        ImageOps.exif_transpose(picture, in_place=True)
        return _to_rgb(picture, background)
  except UnidentifiedImageError as error:
    raise UnreadablePhoto(name, "not an image (Pillow cannot identify its format)") from error
  except Image.DecompressionBombError as error:
    raise UnreadablePhoto(name, f"refused as a possible decompression bomb: {error}") from error
  except UnreadablePhoto:
    raise
  except _DECODE_ERRORS as error:
    raise UnreadablePhoto(name, f"cannot decode: {error}") from error


def _to_rgb(picture: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
  """Any Pillow mode -> u8[H, W, 3]."""
  if picture.mode in _SIXTEEN_BIT_MODES:
    samples = np.clip(np.asarray(picture).astype(np.int32), 0, 65535)
    return np.repeat((samples >> 8).astype(np.uint8)[..., None], 3, axis=-1)
  if picture.mode == "F":
    raise ValueError("32-bit float pixels (mode F) have no agreed range to scale to 8 bits")
  if picture.has_transparency_data:
    canvas = Image.new("RGBA", picture.size, (*background, 255))
    canvas.alpha_composite(picture.convert("RGBA"))
    picture = canvas
  return np.asarray(picture if picture.mode == "RGB" else picture.convert("RGB"), np.uint8)


@dataclasses.dataclass
class Photos:
  """Decoded photos in file order: images[i] came from paths[i]; `skipped` holds the rest.

  images: u8[H_i, W_i, 3] each (full resolution, or as the reader's `prepare` step made them).
  """

  images: list[np.ndarray]
  paths: list[str]
  skipped: list[Skipped]

  def summary(self) -> str:
    """"N photos used, M skipped", for reports."""
    return f"{len(self.paths)} photos used, {len(self.skipped)} skipped"

  def skipped_columns(self) -> dict[str, list[str]]:
    """{"path": [...], "reason": [...]}: the columns of a skipped.csv."""
    return {field: [getattr(row, field) for row in self.skipped] for field in Skipped._fields}


@dataclasses.dataclass
class Reader:
  """Decodes photos one at a time and keeps the files it skipped, with the reason.

  strict: raise UnreadablePhoto on the first unreadable file instead of warning and skipping it.
  """

  strict: bool = False
  background: tuple[int, int, int] = BACKGROUND
  max_pixels: int = MAX_PIXELS
  skipped: list[Skipped] = dataclasses.field(default_factory=list)

  def __call__(self, path: str) -> np.ndarray | None:
    """u8[H, W, 3] of the photo at `path`, or None when it was skipped."""
    try:
      return decode(path, background=self.background, max_pixels=self.max_pixels)
    except UnreadablePhoto as error:
      if self.strict:
        raise
      logging.warning("skipping photo %s", error)
      self.skipped.append(Skipped(error.path, error.reason))
      return None

  def read(self, paths: Sequence[str],
           prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> Photos:
    """Decodes `paths` in order; `prepare` (e.g. a crop and resize) maps each photo as it comes,
    so that only prepared photos are held in memory."""
    images, used, first_skipped = [], [], len(self.skipped)
    for path in paths:
      image = self(path)
      if image is not None:
        images.append(image if prepare is None else prepare(image))
        used.append(path)
    photos = Photos(images, used, self.skipped[first_skipped:])
    logging.info("photos read: %s", photos.summary())
    return photos

