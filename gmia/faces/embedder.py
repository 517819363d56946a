"""Faces in, identity embeddings out: alignment to the matcher's crop, then the matcher.

Alignment is a choice everywhere photos or generated samples are embedded (`align`):
  none    the whole image (a photo: its centre square) resized to the matcher's input: images
          that are already face crops, like the embedded synthetic faces;
  fixed   the same box of every image (`align_box`, fractions), resized: generators whose faces
          are aligned (FFHQ models);
  detect  YuNet (`detector_onnx`) finds the largest confident face and its five landmarks, and a
          similarity transform maps them onto the matcher's template (ArcFace's 112 px one).

Generated samples (same-size batches) go through one jitted function (`FaceEmbedder.embed`),
photos of any size through `embed_photos`; a photo without a usable face is reported by name
and skipped (or an error, with `strict_photos`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from gmia.data import folders
from gmia.faces import align, detect, matchers

ALIGNMENTS = ("none", "fixed", "detect")


def config_fields() -> dict[str, Any]:
  """The config fields of every job that embeds faces: the matcher and the alignment."""
  return {
      "matcher": matchers.default_config(),  # The face network (gmia.faces.matchers).
      "align": "none",                 # none | fixed | detect (see gmia.faces.embedder).
      "align_box": (0.0, 0.0, 1.0, 1.0),  # fixed: (top, left, bottom, right) fractions.
      "detector_onnx": "",             # detect: YuNet (face_detection_yunet_2023mar.onnx).
      "min_face": 32.0,                # detect: shorter side of a usable face, photo pixels.
      "detect_score": 0.9,             # detect: YuNet's confidence (OpenCV's default 0.9; small
                                       # or blurry generated faces may need 0.6).
      "sample_detector_size": 640,     # detect: YuNet's input side for generated samples (a
                                       # multiple of 32; 160 suits 64-128 px faces, 16x faster).
                                       # Photos always go in at 640.
      "strict_photos": False,          # A photo without a usable face is an error, not a skip.
  }


@dataclasses.dataclass(frozen=True, eq=False)
class FaceEmbedder:
  """A matcher behind an alignment. detector: YuNet for photos; sample_detector: for
  generated samples (`embed`); params: {"matcher", "detector"} (see `params`)."""
  matcher: matchers.Matcher
  align: str = "none"
  box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
  detector: Any = None
  sample_detector: Any = None
  rules: detect.DetectionRules = detect.DetectionRules()
  strict: bool = False

  @property
  def params(self) -> dict[str, Any]:
    return {"matcher": self.matcher.params,
            "detector": None if self.sample_detector is None else self.sample_detector.params}

  @property
  def size(self) -> int:
    return self.matcher.input_size

  @property
  def fingerprint(self) -> dict[str, Any]:
    return {"matcher": self.matcher.fingerprint, "align": self.align,
            "box": list(self.box) if self.align == "fixed" else None,
            "detector": None if self.detector is None else [
                self.detector.source, self.sample_detector.input_shapes[0][-1]],
            "rules": dataclasses.asdict(self.rules) if self.detector is not None else None}

  def crops(self, params: dict[str, Any], images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Same-size images f32[B, H, W, 3] RGB in 0..255 -> (crops f32[B, S, S, 3] in 0..255,
    status i32[B] of gmia.faces.detect: FOUND unless `detect` found no usable face)."""
    found = jnp.full(images.shape[:1], detect.FOUND, jnp.int32)
    if self.align == "none":
      return jax.image.resize(images, (images.shape[0], self.size, self.size, 3), "linear",
                              antialias=True), found
    if self.align == "fixed":
      return align.crop_fixed(images, self.box, self.size), found
    crops, faces = detect.detect_and_align(
        self.sample_detector, params["detector"], images, size=self.size, rules=self.rules,
        batch_size=1 if jax.default_backend() == "cpu" else None)
    return crops, faces.status

  def embed(self, params: dict[str, Any], images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Same-size images f32[B, H, W, 3] RGB in 0..255 -> (unit embeddings f32[B, D], status
    i32[B]); jittable, shards over the batch."""
    crops, status = self.crops(params, images)
    return self.matcher.embed(params["matcher"], crops), status

  def align_photos(self, photos: Sequence[np.ndarray], names: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Photos u8[H_i, W_i, 3] (any sizes) -> (crops u8[K, S, S, 3] of those with a usable face,
    their indices i64[K], skipped [(name, reason)]). Raises ValueError for the first skipped
    photo when strict."""
    if self.align == "detect":
      crops, faces = detect.detect_and_align_photos(
          self.detector, self.detector.params, photos, size=self.size, rules=self.rules,
          batch_size=1 if jax.default_backend() == "cpu" else None)
      status = np.asarray(faces.status)
    else:
      crops = np.stack([self._fit(photo) for photo in photos]) if len(photos) else np.zeros(
          (0, self.size, self.size, 3), np.uint8)
      status = np.full(len(photos), detect.FOUND)
    skipped = [(name, detect.STATUS_NAMES[s]) for name, s in zip(names, status.tolist())
               if s != detect.FOUND]
    if skipped and self.strict:
      raise ValueError(f"{skipped[0][0]}: {skipped[0][1]} (strict_photos)")
    for name, reason in skipped:
      logging.warning("skipping %s: %s", name, reason)
    kept = np.flatnonzero(status == detect.FOUND)
    return np.clip(np.rint(np.asarray(crops)[kept]), 0, 255).astype(np.uint8), kept, skipped

  def _fit(self, photo: np.ndarray) -> np.ndarray:
    """One photo -> u8[S, S, 3]: `none` its centre square, `fixed` its box, resized."""
    if self.align == "none":
      return folders.fit_photo(photo, self.size, None)
    height, width = photo.shape[:2]
    top, left, bottom, right = self.box
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    picture = Image.fromarray(photo).crop(box).resize((self.size, self.size), Image.LANCZOS)
    return np.asarray(picture, np.uint8)


def load_embedder(config: ml_collections.ConfigDict) -> FaceEmbedder:
  """The matcher and alignment a job's config names (see `config_fields`)."""
  if config.align not in ALIGNMENTS:
    raise ValueError(f"unknown align {config.align!r}; choose from {ALIGNMENTS}")
  detector = sample_detector = None
  if config.align == "detect":
    if not config.detector_onnx:
      raise ValueError("align=detect needs config.detector_onnx: a YuNet ONNX file "
                       "(face_detection_yunet_2023mar.onnx)")
    detector = detect.load_yunet(config.detector_onnx)
    sample_detector = (detector if config.sample_detector_size == 640 else
                       detect.load_yunet(config.detector_onnx, config.sample_detector_size))
  return FaceEmbedder(matchers.load_matcher(config.matcher), config.align, tuple(config.align_box),
                      detector, sample_detector,
                      detect.DetectionRules(score_threshold=config.detect_score,
                                                      min_face=config.min_face),
                      config.strict_photos)


@functools.cache
def jitted_embed(embedder: FaceEmbedder):
  """`embedder.embed` jitted once per embedder."""
  return jax.jit(embedder.embed)


@dataclasses.dataclass(frozen=True)
class EmbeddedPhotos:
  """crops: u8[K, S, S, 3] the aligned faces the matcher saw; embeddings: f32[K, D] unit;
  kept: i64[K] their indices among the photos given; skipped: [(name, reason)]."""
  crops: np.ndarray
  embeddings: np.ndarray
  kept: np.ndarray
  skipped: list[tuple[str, str]]


def embed_photos(embedder: FaceEmbedder, photos: Sequence[np.ndarray], names: Sequence[str],
                 mesh) -> EmbeddedPhotos:
  """Aligns and embeds photos u8[H_i, W_i, 3] of any sizes (see FaceEmbedder.align_photos)."""
  crops, kept, skipped = embedder.align_photos(photos, names)
  embeddings = matchers.embed_crops(embedder.matcher, crops, mesh)
  return EmbeddedPhotos(crops, embeddings, kept, skipped)
