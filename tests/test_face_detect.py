"""YuNet detection and alignment on real photos (tests/assets.py), with SFace as the matcher.

References: onnxruntime runs the same YuNet on the same letterboxed inputs, decoded by a plain
numpy transcription of OpenCV's FaceDetectorYN (every anchor, sort, greedy NMS); SFace's
embeddings of the aligned crops must separate the people (outside gmia, with onnxruntime and
OpenCV: same-person min 0.61, different-person max 0.25).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from gmia.faces import detect  # noqa: E402
from gmia.onnx import import_onnx  # noqa: E402
from tests import assets  # noqa: E402

RULES = detect.DetectionRules()


def synthetic_photos(portrait):
  """A blank photo, two copies of a portrait side by side, and a face of about 25 px."""
  blank = np.full((300, 400, 3), 128, np.uint8)
  pair = np.concatenate([portrait, portrait], 1)
  small = np.full((600, 600, 3), 128, np.uint8)
  small[200:272, 300:358] = np.asarray(Image.fromarray(portrait).resize((58, 72),
                                                                        Image.BILINEAR))
  return [blank, pair, small]


@pytest.fixture(scope="session")
def detected():
  """(people, photos, aligned crops, Faces) of the real photos and then the synthetic ones,
  all in one batch (one compilation)."""
  people, paths = zip(*assets.photos())
  photos = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
  photos += synthetic_photos(photos[1])
  net = detect.load_yunet(assets.yunet_path())
  aligned, faces = detect.detect_and_align_photos(net, net.params, photos, rules=RULES,
                                                  batch=len(photos), batch_size=1)
  return list(people), photos, aligned, faces


def opencv_decode(outputs, size, rules):
  """OpenCV's FaceDetectorYN post-processing in numpy: (scores [F], boxes [F, 4] as x0, y0, x1,
  y1, landmarks [F, 5, 2]) of the faces kept, best first."""
  scores, boxes, points = [], [], []
  for stride in detect.STRIDES:
    cells = size // stride
    rows, cols = np.divmod(np.arange(cells * cells), cells)
    cls, obj = (np.clip(outputs[f"{k}_{stride}"][:, 0], 0, 1) for k in ("cls", "obj"))
    bbox, kps = outputs[f"bbox_{stride}"], outputs[f"kps_{stride}"].reshape(-1, 5, 2)
    cx, cy = (cols + bbox[:, 0]) * stride, (rows + bbox[:, 1]) * stride
    w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
    scores.append(np.sqrt(cls * obj))
    boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1))
    points.append((kps + np.stack([cols, rows], -1)[:, None]) * stride)
  scores, boxes, points = (np.concatenate(v) for v in (scores, boxes, points))
  kept = greedy_nms(scores, boxes, rules)
  return scores[kept], boxes[kept], points[kept]


def greedy_nms(scores, boxes, rules):
  """OpenCV's NMSBoxes order of decisions: best first, drop what overlaps a kept box."""
  kept = []
  for i in np.argsort(-scores, kind="stable"):
    if scores[i] < rules.score_threshold:
      continue
    low = np.maximum(boxes[i, :2], boxes[kept, :2])
    high = np.minimum(boxes[i, 2:], boxes[kept, 2:])
    inter = np.prod(np.clip(high - low, 0, None), -1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], -1)
    if np.all(inter / (area(boxes[i]) + area(boxes[kept]) - inter) <= rules.nms_threshold):
      kept.append(i)
  return kept


def test_nms_equals_greedy_suppression_on_crowded_boxes():
  rng = np.random.default_rng(0)
  suppress = jax.jit(lambda s, b: detect.nms(s, b, RULES.score_threshold, RULES.nms_threshold))
  for _ in range(20):
    corners = rng.uniform(0, 100, (64, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (64, 2))], 1).astype(np.float32)
    scores = np.sort(rng.uniform(0.8, 1, 64))[::-1].astype(np.float32)
    expected = np.zeros(64, bool)
    expected[greedy_nms(scores, boxes, RULES)] = True
    assert expected.sum() > 3
    np.testing.assert_array_equal(suppress(scores, boxes), expected)


def test_one_face_found_in_each_real_portrait(detected):
  people, _, _, faces = detected
  real = len(people)
  assert list(faces.count[:real]) == [1] * real
  assert [detect.STATUS_NAMES[s] for s in faces.status[:real]] == ["found"] * real


def test_photos_without_a_usable_face_are_reported(detected):
  people, _, _, faces = detected
  blank, pair, small = (detect.STATUS_NAMES[s] for s in faces.status[len(people):])
  assert (blank, pair, small) == ("no face", "several faces of similar size", "face too small")
  assert faces.count[len(people) + 1] == 2


def test_landmarks_match_onnxruntime_with_opencv_decoding(detected):
  people, photos, _, faces = detected
  canvas, extents = detect.pad_to_canvas(photos[:len(people)])
  size = 640
  boxed = jax.jit(jax.vmap(functools.partial(detect.letterbox, size=size)))
  images, factors = (np.asarray(v) for v in boxed(canvas, extent=extents))
  session = assets.onnxruntime_session(assets.yunet_path())
  names = [o.name for o in session.get_outputs()]
  for i, (image, factor) in enumerate(zip(images, factors)):
    bgr = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)[None])
    outputs = {n: v[0] for n, v in zip(names, session.run(None, {"input": bgr}))}
    scores, boxes, points = opencv_decode(outputs, size, RULES)
    assert len(scores) == faces.count[i] == 1
    expected = (points[0] + 0.5) / factor - 0.5
    np.testing.assert_allclose(faces.landmarks[i], expected, atol=1.0)
    np.testing.assert_allclose(faces.box[i], boxes[0] / factor, atol=1.0)


def similarity_ranges(embeddings, people):
  """(min, max) of same-person and of different-person cosine similarities."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  similarity = unit @ unit.T
  pairs = [(i, j) for i in range(len(people)) for j in range(i)]
  same = [similarity[p] for p in pairs if people[p[0]] == people[p[1]]]
  different = [similarity[p] for p in pairs if people[p[0]] != people[p[1]]]
  return (min(same), max(same)), (min(different), max(different))


def plain_resize(photo, size=112):
  """The `none` alignment: the centre square of the photo, resized."""
  height, width = photo.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = Image.fromarray(photo[top:top + side, left:left + side])
  return np.asarray(square.resize((size, size), Image.BILINEAR), np.float32)


def test_sface_separates_people_after_alignment(detected):
  people, photos, aligned, _ = detected
  sface = import_onnx(assets.sface_path())
  embed = jax.jit(sface.apply_each)  # SFace reads RGB in 0..255, NCHW.
  crops = {"detect": aligned[:len(people)],
           "none": np.stack([plain_resize(p) for p in photos[:len(people)]])}
  ranges = {mode: similarity_ranges(np.asarray(embed(sface.params, jnp.transpose(
      jnp.asarray(c), (0, 3, 1, 2)))), people) for mode, c in crops.items()}
  for mode, ((same_low, same_high), (diff_low, diff_high)) in ranges.items():
    print(f"SFace align={mode}: same person {same_low:.3f}..{same_high:.3f}, "
          f"different people {diff_low:.3f}..{diff_high:.3f}")
  (same_low, _), (_, diff_high) = ranges["detect"]
  assert same_low > diff_high
