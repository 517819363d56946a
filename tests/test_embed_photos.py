"""Real photos through a real matcher: attack/embed_photos with SFace, YuNet detection and the
ArcFace template, against plain resizing, and the photos a reader must skip."""

import os

import numpy as np
import pytest
from PIL import Image

from gmia.jobs import embed_photos as embed_photos_job
from tests import assets


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
  """Identity folders of the 10 real photos of 5 people, plus a blank photo and a corrupt file."""
  root = tmp_path_factory.mktemp("photos")
  for person, path in assets.photos():
    (root / person).mkdir(exist_ok=True)
    os.symlink(path, root / person / os.path.basename(path))
  Image.new("RGB", (200, 200), (128, 128, 128)).save(root / "obama" / "blank.png")
  (root / "biden" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  return str(root)


def embed(photo_folders, tmp_path, align):
  config = embed_photos_job.default_config()
  config.photos_dir = photo_folders
  config.matcher.update(path=assets.sface_path(), preset="sface")
  config.align, config.detector_onnx = align, assets.yunet_path()
  return embed_photos_job.run(config, str(tmp_path / align))


def test_detected_and_aligned_faces_separate_people(photo_folders, tmp_path):
  """Measured outside gmia (onnxruntime, OpenCV): same-person min 0.61, different max 0.25."""
  result = embed(photo_folders, tmp_path, "detect")
  none = embed(photo_folders, tmp_path, "none")
  print("detect", {k: v for k, v in result.items() if "person" in k})
  print("none", {k: v for k, v in none.items() if "person" in k})
  assert result["photos"] == 12 and result["used"] == 10 and result["skipped"] == 2
  assert result["separated"] and result["same_person_min"] > 0.5
  assert result["different_person_max"] < 0.35
  # Plain resizing of whole photos blurs who is who: the margin shrinks.
  assert (result["same_person_min"] - result["different_person_max"]
          > none["same_person_min"] - none["different_person_max"] + 0.2)
  with np.load(tmp_path / "detect" / "embeddings.npz") as saved:
    assert saved["aligned"].shape == (10, 112, 112, 3) and saved["aligned"].dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1, atol=1e-5)
    assert saved["embeddings"].shape == (10, 128)
    assert sorted(set(saved["identity"].tolist())) == ["ardern", "biden", "macron", "obama",
                                                       "sunak"]
  skipped = (tmp_path / "detect" / "skipped.csv").read_text()
  assert "blank.png,no face" in skipped and "broken.jpg,not an image" in skipped
  for name in ("faces.png", "similarity.png", "report.json"):
    assert (tmp_path / "detect" / name).exists(), name


def test_strict_photos_make_a_skipped_photo_an_error(photo_folders, tmp_path):
  config = embed_photos_job.default_config()
  config.photos_dir = os.path.join(photo_folders, "obama")
  config.matcher.update(path=assets.sface_path(), preset="sface")
  config.align, config.detector_onnx, config.strict_photos = "detect", assets.yunet_path(), True
  with pytest.raises(ValueError, match="blank.png: no face"):
    embed_photos_job.run(config, str(tmp_path))
  config.align, config.detector_onnx = "detect", ""
  with pytest.raises(ValueError, match="align=detect needs config.detector_onnx"):
    embed_photos_job.run(config, str(tmp_path))
  config.align, config.matcher.preset = "none", "deepface"
  with pytest.raises(ValueError, match="unknown config.matcher.preset .deepface."):
    embed_photos_job.run(config, str(tmp_path))
