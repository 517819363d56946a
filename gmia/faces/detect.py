"""YuNet face detection through gmia.onnx: input preparation, decoding, choosing the face.

As OpenCV's FaceDetectorYN does it: the photo, scaled so its longer side fills YuNet's square
input and padded with zeros below and right (letterbox), enters as BGR floats in 0..255, NCHW;
each of the 8400 anchors (strides 8, 16, 32 of a 640 px input) scores sqrt(cls * obj), its box
is ((c + dx) s, (r + dy) s, e^dw s, e^dh s) around cell (r, c) and its five landmarks (the
subject's right eye, left eye, nose tip, right and left mouth corner, i.e. left to right in the
image as in the arcface template) are ((c + lx) s, (r + ly) s); greedy NMS at IoU 0.3 keeps the
best of overlapping boxes. Inside jit the candidates are the `top_k` best-scoring anchors (a
fixed size), and photos of different sizes share a zero canvas, so everything batches and vmaps.

The face kept is the largest confident one; a photo is reported (`status`) as FOUND, NO_FACE,
SEVERAL_FACES (the second-largest face's side is at least `similar_size` of the largest's) or
TOO_SMALL (the face box's shorter side is under `min_face` photo pixels).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gmia.faces.align import ARCFACE_TEMPLATE, align_face, warp_affine
from gmia.onnx import OnnxNetwork, import_onnx

STRIDES = (8, 16, 32)
FOUND, NO_FACE, SEVERAL_FACES, TOO_SMALL = range(4)
STATUS_NAMES = ("found", "no face", "several faces of similar size", "face too small")


@dataclasses.dataclass(frozen=True)
class DetectionRules:
  """Thresholds of detection and of the choice of the face."""
  score_threshold: float = 0.9  # OpenCV's FaceDetectorYN default.
  nms_threshold: float = 0.3
  top_k: int = 128  # Candidates decoded per photo (about 7 per face pass 0.9).
  min_face: float = 32.0  # Photo pixels, shorter side of the face box.
  similar_size: float = 0.75  # Second face's side / largest face's: ambiguous photo.


class Faces(NamedTuple):
  """The chosen face of each photo, in photo pixel coordinates (pixel centres at integers).

  landmarks: f32[B, 5, 2] (x, y); box: f32[B, 4] (x0, y0, x1, y1); score: f32[B];
  count: i32[B] faces kept after NMS; status: i32[B], an index into STATUS_NAMES. Where count
  is 0 the other fields describe no face.
  """
  landmarks: jax.Array
  box: jax.Array
  score: jax.Array
  count: jax.Array
  status: jax.Array


def load_yunet(path: str, size: int = 640) -> OnnxNetwork:
  """YuNet (e.g. face_detection_yunet_2023mar.onnx) imported for size x size inputs."""
  if size % STRIDES[-1]:
    raise ValueError(f"YuNet's input size must be a multiple of {STRIDES[-1]}, got {size}")
  net = import_onnx(path, input_shapes={"input": (1, 3, size, size)})
  expected = {f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES}
  if set(net.output_names) != expected:
    raise ValueError(f"{path}: not a YuNet graph: outputs {list(net.output_names)}, expected "
                     f"{sorted(expected)}")
  return net


def letterbox(photo: jax.Array, size: int, extent: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """Scales a photo [H, W, 3] so its longer side is `size`, zeros below and right of it.

  extent: i32[2] (height, width) of the photo in the top-left corner of a zero-padded canvas
  (traced values are fine), default the whole array. Returns (f32[size, size, 3] with the photo's
  channel order and range, f32[] the factor from photo to letterbox pixels). Bilinear sampling,
  pixel centres mapped as x_out + 0.5 = factor (x_in + 0.5).
  """
  extent = jnp.asarray(photo.shape[:2] if extent is None else extent, jnp.float32)
  factor = size / jnp.max(extent)
  shift = 0.5 * factor - 0.5
  transform = jnp.array([[factor, 0.0, shift], [0.0, factor, shift]])
  return warp_affine(photo, transform, size), factor


def _anchors(size: int) -> np.ndarray:
  """f32[N, 3] (column, row, stride) of every anchor, in the order of YuNet's outputs."""
  grids = []
  for stride in STRIDES:
    cells = size // stride
    rows, cols = np.mgrid[0:cells, 0:cells]
    grids.append(np.stack([cols.ravel(), rows.ravel(), np.full(cells * cells, stride)], -1))
  return np.concatenate(grids).astype(np.float32)


def decode(outputs: dict[str, jax.Array], size: int, top_k: int
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The top_k best anchors of one photo's YuNet outputs ({name: [N_s, k]}), best first.

  Returns (scores f32[K], boxes f32[K, 4] (x0, y0, x1, y1), landmarks f32[K, 5, 2]) in input
  pixels.
  """
  cat = lambda kind: jnp.concatenate([outputs[f"{kind}_{s}"] for s in STRIDES])
  scores = jnp.sqrt(jnp.clip(cat("cls")[:, 0], 0, 1) * jnp.clip(cat("obj")[:, 0], 0, 1))
  top_k = min(top_k, scores.shape[0])  # A small input has fewer anchors than top_k.
  scores, best = jax.lax.top_k(scores, top_k)
  anchors = jnp.asarray(_anchors(size))[best]
  cell, stride = anchors[:, None, :2], anchors[:, None, 2:]
  bbox, kps = cat("bbox")[best], cat("kps")[best].reshape(top_k, 5, 2)
  centre = (cell[:, 0] + bbox[:, :2]) * stride[:, 0]
  extent = jnp.exp(bbox[:, 2:]) * stride[:, 0]
  boxes = jnp.concatenate([centre - extent / 2, centre + extent / 2], -1)
  return scores, boxes, (kps + cell) * stride


def nms(scores: jax.Array, boxes: jax.Array, score_threshold: float, iou_threshold: float
        ) -> jax.Array:
  """Greedy non-maximum suppression of boxes sorted best first: keep bool[K].

  Greedy NMS keeps box i iff it passes the threshold and overlaps no kept box before it. That
  rule has one solution, reached by applying it to all boxes at once until nothing changes
  (a few rounds, where a loop over the boxes would take K steps).
  """
  low, high = boxes[:, :2], boxes[:, 2:]
  area = jnp.prod(high - low, -1)
  overlap = jnp.prod(jnp.clip(jnp.minimum(high[:, None], high[None]) -
                              jnp.maximum(low[:, None], low[None]), 0), -1)
  iou = overlap / (area[:, None] + area[None] - overlap)
  earlier = jnp.tril(jnp.ones(iou.shape, bool), -1)
  suppresses = (iou > iou_threshold) & earlier  # [i, j]: j before i overlaps i.
  valid = scores >= score_threshold

  def rule(keep):
    return valid & ~jnp.any(suppresses & keep[None, :], axis=1)

  def changed(state):
    keep, previous = state
    return jnp.any(keep != previous)

  keep, _ = jax.lax.while_loop(changed, lambda state: (rule(state[0]), state[0]),
                               (rule(valid), valid))
  return keep


def choose_face(scores: jax.Array, boxes: jax.Array, landmarks: jax.Array, keep: jax.Array,
                factor: jax.Array, rules: DetectionRules) -> Faces:
  """The largest kept face of one photo, mapped to photo pixels by its letterbox factor."""
  sides = jnp.sqrt(jnp.prod(boxes[:, 2:] - boxes[:, :2], -1))
  sides = jnp.where(keep, sides, -1.0)
  largest = jnp.argmax(sides)
  second = jnp.max(sides.at[largest].set(-1.0))
  box = boxes[largest] / factor
  points = (landmarks[largest] + 0.5) / factor - 0.5
  count = keep.sum()
  status = jnp.where(count == 0, NO_FACE,
                     jnp.where(second >= rules.similar_size * sides[largest], SEVERAL_FACES,
                               jnp.where(jnp.min(box[2:] - box[:2]) < rules.min_face, TOO_SMALL,
                                         FOUND)))
  return Faces(points, box, scores[largest], count, status)


def _detect_one(net: OnnxNetwork, params: dict, image: jax.Array, factor: jax.Array,
                rules: DetectionRules) -> Faces:
  """The face of one letterboxed photo f32[S, S, 3] (RGB): network, decoding and choice."""
  # YuNet's NCHW input is made channels-last again by gmia.onnx for its first convolution: XLA
  # makes the channel flip and both transposes one pass over the photo.
  bgr = jnp.transpose(image[..., ::-1], (2, 0, 1))[None]
  outputs = {name: y[0] for name, y in zip(net.output_names, net.apply(params, bgr))}
  scores, boxes, landmarks = decode(outputs, image.shape[0], rules.top_k)
  keep = nms(scores, boxes, rules.score_threshold, rules.nms_threshold)
  return choose_face(scores, boxes, landmarks, keep, factor, rules)


def _each(one, args, batch_size: int | None):
  """`one` over the leading axis of `args`: vmapped (batch_size None) or mapped over chunks."""
  if batch_size is None:
    return jax.vmap(one)(*args)
  # One at a time without lax.map's chunking, whose [B, 1, ...] reshape XLA:CPU copies.
  return jax.lax.map(lambda sample: one(*sample), args,
                     batch_size=None if batch_size == 1 else batch_size)


def detect_faces(net: OnnxNetwork, params: dict, images: jax.Array, factors: jax.Array,
                 rules: DetectionRules = DetectionRules(), batch_size: int | None = None
                 ) -> Faces:
  """Faces of letterboxed photos: images f32[B, S, S, 3] RGB in 0..255 (S: YuNet's input size),
  factors f32[B] from photo to letterbox pixels. Jit and shard like any pure function;
  batch_size as in OnnxNetwork.apply_each (on CPU 1 runs fastest): each photo goes through the
  network, its decoding and NMS before the next."""
  size = net.input_shapes[0][-1]
  if images.shape[1:] != (size, size, 3):
    raise ValueError(f"images must be [B, {size}, {size}, 3] (letterboxed RGB), got "
                     f"{images.shape}")
  return _each(lambda image, factor: _detect_one(net, params, image, factor, rules),
               (images, factors), batch_size)


def detect_and_align(net: OnnxNetwork, params: dict, photos: jax.Array,
                     extents: jax.Array | None = None, size: int = 112,
                     template: jax.Array | None = None,
                     rules: DetectionRules = DetectionRules(), batch_size: int | None = None
                     ) -> tuple[jax.Array, Faces]:
  """Finds and aligns the face of each photo: the `detect` alignment, one jittable function.

  photos: [B, H, W, 3] RGB in 0..255 (uint8 or float); extents: i32[B, 2] (height, width) of
  each photo in the top-left corner of its zero-padded [H, W] canvas (default all of it).
  template: f32[5, 2] in crop pixels (default arcface's at `size`); batch_size as in
  detect_faces. Returns (aligned f32[B, size, size, 3] in 0..255, Faces in photo pixels). The
  largest face is aligned whatever the status; a photo with no face gets a plain crop of its
  top-left square.
  """
  template = ARCFACE_TEMPLATE * (size / 112.0) if template is None else jnp.asarray(template)
  if extents is None:
    extents = jnp.broadcast_to(jnp.array(photos.shape[1:3]), (photos.shape[0], 2))
  input_size = net.input_shapes[0][-1]

  def one(photo, extent):
    # The whole path of a photo in one step: its letterbox is made and read while in cache.
    image, factor = letterbox(photo, input_size, extent)
    faces = _detect_one(net, params, image, factor, rules)
    # A plain crop of the top-left square stands in where there is no face.
    points = jnp.where(faces.count > 0, faces.landmarks,
                       template * (jnp.min(extent) / size))
    return align_face(photo, points, size, template), faces

  return _each(one, (photos, extents), batch_size)


_detect_and_align = jax.jit(detect_and_align,
                            static_argnames=("net", "size", "rules", "batch_size"))
CANVAS_STEP = 256  # Canvas sides are multiples of this: few distinct shapes, few compilations.


def pad_to_canvas(photos: Sequence[np.ndarray], count: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Photos u8[H_i, W_i, 3] in the top-left corners of zero canvases u8[count, H, W, 3] whose
  sides are the largest photo's rounded up to a multiple of CANVAS_STEP; with their extents
  i32[count, 2] (height, width). Slots past the photos (count > len(photos)) stay blank."""
  count = len(photos) if count is None else count
  extents = np.ones((count, 2), np.int32)
  extents[:len(photos)] = [np.shape(photo)[:2] for photo in photos]
  height, width = (-(-extents.max(0) // CANVAS_STEP) * CANVAS_STEP).tolist()
  canvas = np.zeros((count, height, width, 3), np.uint8)
  for i, photo in enumerate(photos):
    canvas[i, :photo.shape[0], :photo.shape[1]] = photo
  return canvas, extents


def detect_and_align_photos(net: OnnxNetwork, params: dict, photos: Sequence[np.ndarray],
                            size: int = 112, template: np.ndarray | None = None,
                            rules: DetectionRules = DetectionRules(), batch: int = 16,
                            batch_size: int | None = None) -> tuple[np.ndarray, Faces]:
  """`detect_and_align` for photos of any sizes, u8[H_i, W_i, 3] RGB, `batch` at a time.

  Each chunk goes on canvases (pad_to_canvas), so one compiled function serves each canvas
  shape; batch_size as in detect_faces. Returns (aligned f32[N, size, size, 3] in 0..255,
  Faces with numpy fields [N, ...]).
  """
  aligned, faces = [], []
  for start in range(0, len(photos), batch):
    chunk = [np.asarray(photo) for photo in photos[start:start + batch]]
    canvas, extents = pad_to_canvas(chunk, batch)
    crops, found = _detect_and_align(net, params, canvas, extents, size=size, template=template,
                                     rules=rules, batch_size=batch_size)
    aligned.append(np.asarray(crops)[:len(chunk)])
    faces.append(Faces(*(np.asarray(field)[:len(chunk)] for field in found)))
  return np.concatenate(aligned), Faces(*(np.concatenate(fields) for fields in zip(*faces)))
