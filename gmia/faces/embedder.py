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

Detection settings fit the input unless set. Photos go into YuNet at 640 px, kept at OpenCV's
score 0.9. Generated samples of side R go in at `auto_detector_size(R)` (2.5 R rounded up to 32,
at most 640) with a score of `auto_detect_score(R)` (0.6 below 256 px, 0.9 from there). Measured
with YuNet 2023mar on 300 samples of the 64 px DCGAN of tests/dcgan.py: at 640 px none scores
0.9 (the best 0.889: a face blown up 10x is a blur), at 160 px 257 do and 298 score 0.6; real
faces of the test photos shrunk to 32-512 px all score 0.91 or more at their automatic size,
against 0.85 for 32 px ones blown up to 640. `FaceEmbedder.for_samples(R)` makes the choice,
and `describe_detections` tells a user whose samples show no usable face what YuNet saw in them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
      "detect_score": 0.0,             # detect: YuNet's confidence; 0: auto, OpenCV's 0.9 for
                                       # photos, auto_detect_score(R) for R px samples.
      "sample_detector_size": 0,       # detect: YuNet's input side for generated samples (a
                                       # multiple of 32); 0: auto_detector_size(R) for R px
                                       # samples. Photos always go in at 640.
      "strict_photos": False,          # A photo without a usable face is an error, not a skip.
  }


PHOTO_DETECTOR_SIZE, PHOTO_SCORE = 640, 0.9  # OpenCV's FaceDetectorYN defaults.
# The fewest anchors YuNet's decoding takes (its top_k candidates) come from a 96 px input.
MIN_DETECTOR_SIZE = 96


def auto_detector_size(side: int) -> int:
  """YuNet's input side for generated samples of `side` px: the smallest multiple of 32 at
  least 2.5x the side, from MIN_DETECTOR_SIZE to 640 (see the module docstring)."""
  stride = detect.STRIDES[-1]
  return min(PHOTO_DETECTOR_SIZE, max(MIN_DETECTOR_SIZE, stride * math.ceil(2.5 * side / stride)))


def auto_detect_score(side: int) -> float:
  """YuNet's score threshold for generated samples of `side` px: lower for the small ones,
  which are blown up to reach YuNet and blurred by it (see the module docstring)."""
  return 0.6 if side < 256 else PHOTO_SCORE


@dataclasses.dataclass(frozen=True, eq=False)
class FaceEmbedder:
  """A matcher behind an alignment. detector and rules: YuNet for photos; sample_detector and
  sample_rules: for generated samples (`embed`), None where chosen automatically until
  `for_samples` chooses them; sample_settings: (detector size, score) as configured, 0 for
  automatic; params: {"matcher", "detector"} (see `params`)."""
  matcher: matchers.Matcher
  align: str = "none"
  box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
  detector: Any = None
  sample_detector: Any = None
  rules: detect.DetectionRules = detect.DetectionRules()
  strict: bool = False
  sample_rules: detect.DetectionRules | None = None
  sample_settings: tuple[int, float] = (PHOTO_DETECTOR_SIZE, PHOTO_SCORE)

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
                self.detector.source, self.sample_settings[0]],
            "rules": None if self.detector is None else dataclasses.asdict(dataclasses.replace(
                self.rules, score_threshold=self.sample_settings[1]))}

  def for_samples(self, side: int) -> FaceEmbedder:
    """This embedder with the detection settings left automatic chosen for generated samples
    of `side` px (auto_detector_size, auto_detect_score)."""
    if self.align != "detect" or (self.sample_detector is not None
                                  and self.sample_rules is not None):
      return self
    size = auto_detector_size(side)
    detector = self.sample_detector or (self.detector if size == PHOTO_DETECTOR_SIZE else
                                        detect.load_yunet(self.detector.source, size))
    rules = self.sample_rules or dataclasses.replace(self.rules,
                                                     score_threshold=auto_detect_score(side))
    logging.info("faces of the %d px samples: YuNet at %d px, score %g or more", side,
                 detector.input_shapes[0][-1], rules.score_threshold)
    return dataclasses.replace(self, sample_detector=detector, sample_rules=rules)

  def describe_detections(self, params: dict[str, Any], images: jax.Array) -> str:
    """What the sample detector sees in images f32[B, R, R, 3] RGB in 0..255 that gave no usable
    face, and which setting to change: one line."""
    rules = self.sample_rules
    size = self.sample_detector.input_shapes[0][-1]
    # A low threshold shows the faces the rules refused.
    seen = jax.tree.map(np.asarray, _detect_jit(
        self.sample_detector, params["detector"], images, self.size,
        dataclasses.replace(rules, score_threshold=DIAGNOSIS_SCORE)))
    found = seen.count > 0
    score = np.where(found, seen.score, 0.0)
    sides = np.min(seen.box[:, 2:] - seen.box[:, :2], axis=1)[found]
    counts = np.bincount(seen.status[score >= rules.score_threshold],
                         minlength=len(detect.STATUS_NAMES))
    saw = (f"YuNet at {size} px (config.sample_detector_size) on {len(images)} samples of "
           f"{images.shape[1]} px: best face score {score.max():.2f} against a threshold of "
           f"{rules.score_threshold:g} (config.detect_score)")
    if not found.any():
      return (f"{saw}, no face at all: do the samples show faces? Try another "
              "config.sample_detector_size (a multiple of 32 near 2.5x the samples' side)")
    saw += (f", faces of {sides.min():.0f}-{sides.max():.0f} px against a minimum of "
            f"{rules.min_face:g} (config.min_face), {counts[detect.SEVERAL_FACES]} samples with "
            "several faces")
    if score.max() < rules.score_threshold:
      return f"{saw}: set --config.detect_score={math.floor(score.max() * 20) / 20:g} or lower"
    if counts[detect.TOO_SMALL]:
      return f"{saw}: set --config.min_face={math.floor(sides.max()):d} or lower"
    return f"{saw}: faces of similar size side by side are refused; try --config.align=fixed"

  def crops(self, params: dict[str, Any], images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Same-size images f32[B, H, W, 3] RGB in 0..255 -> (crops f32[B, S, S, 3] in 0..255,
    status i32[B] of gmia.faces.detect: FOUND unless `detect` found no usable face)."""
    found = jnp.full(images.shape[:1], detect.FOUND, jnp.int32)
    if self.align == "none":
      return jax.image.resize(images, (images.shape[0], self.size, self.size, 3), "linear",
                              antialias=True), found
    if self.align == "fixed":
      return align.crop_fixed(images, self.box, self.size), found
    if self.sample_detector is None or self.sample_rules is None:
      raise ValueError("the sample detector's settings are automatic: choose them with "
                       "FaceEmbedder.for_samples(resolution) first")
    crops, faces = detect.detect_and_align(
        self.sample_detector, params["detector"], images, size=self.size,
        rules=self.sample_rules, batch_size=1 if jax.default_backend() == "cpu" else None)
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
    size = config.sample_detector_size
    if size < 0 or not 0 <= config.detect_score <= 1:
      raise ValueError(f"sample_detector_size must be 0 (auto) or a positive multiple of 32, "
                       f"detect_score 0 (auto) or in (0, 1]; got {size} and "
                       f"{config.detect_score}")
    detector = detect.load_yunet(config.detector_onnx)
    sample_detector = (None if size == 0 else detector if size == PHOTO_DETECTOR_SIZE else
                       detect.load_yunet(config.detector_onnx, size))
  rules = detect.DetectionRules(score_threshold=config.detect_score or PHOTO_SCORE,
                                min_face=config.min_face)
  return FaceEmbedder(matchers.load_matcher(config.matcher), config.align, tuple(config.align_box),
                      detector, sample_detector, rules, config.strict_photos,
                      sample_rules=rules if config.detect_score else None,
                      sample_settings=(config.sample_detector_size, config.detect_score))


# What describe_detections counts as a face it could have used.
DIAGNOSIS_SCORE = 0.3
_detect_jit = jax.jit(lambda net, params, images, size, rules: detect.detect_and_align(
    net, params, images, size=size, rules=rules,
    batch_size=1 if jax.default_backend() == "cpu" else None)[1], static_argnums=(0, 3, 4))


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
