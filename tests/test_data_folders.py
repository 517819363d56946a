"""Local photo collections: identity folders, LFW, VGGFace2 and CelebA on fake on-disk copies."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

import gmia.data
from gmia.data import folders


def _write_photo(path, size=(40, 50), seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return pixels


def test_identity_folder_with_a_corrupt_file(tmp_path, caplog):
  root = tmp_path / "people"
  for person, count in {"carol": 2, "alice": 3, "bob": 1}.items():
    for k in range(count):
      _write_photo(str(root / person / f"{k}.png"), seed=hash(person) % 1000 + k)
  (root / "bob" / "broken.jpg").write_bytes(b"this is not a jpeg")
  (root / "notes.txt").write_text("ignored: not a folder of photos")
  with caplog.at_level(logging.WARNING):
    arrays = gmia.data.load("identity_folder", data_dir=str(tmp_path / "tfds"),
                            manual_dir=str(root), resolution=16)
  assert "broken.jpg" in caplog.text
  assert arrays.images.shape == (6, 16, 16, 3)
  names = folders.identity_names("identity_folder", str(root))
  assert names == ["alice", "bob", "carol"]
  counts = {names[i]: int(c) for i, c in zip(*np.unique(arrays.identity, return_counts=True))}
  assert counts == {"alice": 3, "bob": 1, "carol": 2}
  assert len(set(arrays.photo_id.tolist())) == 6


def test_decoding_matches_pillow_resize(tmp_path):
  pixels = _write_photo(str(tmp_path / "p" / "x" / "a.png"), size=(30, 20))
  decoded = folders.load_photo(str(tmp_path / "p" / "x" / "a.png"), 8, None)
  expected = np.asarray(Image.fromarray(pixels[:, 5:25]).resize((8, 8), Image.LANCZOS))
  np.testing.assert_array_equal(decoded, expected)


def test_lfw_layout_maps_names_to_ids(tmp_path):
  root = tmp_path / "lfw_download"
  for name in ("Zed_Zulu", "Ann_Able"):
    for k in (1, 2):
      _write_photo(str(root / "lfw" / name / f"{name}_{k:04d}.jpg"), size=(25, 25), seed=k)
  arrays = gmia.data.load("lfw", data_dir=str(tmp_path / "tfds"), manual_dir=str(root),
                          resolution=16)
  assert folders.identity_names("lfw", str(root)) == ["Ann_Able", "Zed_Zulu"]
  assert sorted(arrays.identity.tolist()) == [0, 0, 1, 1]


def test_vggface2_merges_train_and_test(tmp_path):
  root = tmp_path / "vgg"
  _write_photo(str(root / "train" / "n000002" / "0001_01.jpg"))
  _write_photo(str(root / "train" / "n000002" / "0002_01.jpg"))
  _write_photo(str(root / "test" / "n000009" / "0001_01.jpg"))
  arrays = gmia.data.load("vggface2", data_dir=str(tmp_path / "tfds"), manual_dir=str(root),
                          resolution=16)
  assert sorted(arrays.identity.tolist()) == [0, 0, 1]


def test_celeb_a_reads_identity_file_and_crops_the_face(tmp_path):
  root = tmp_path / "celeba"
  for k in (1, 2, 3):
    _write_photo(str(root / "img_align_celeba" / f"{k:06d}.jpg"), size=(178, 218), seed=k)
  (root / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg 17\n000003.jpg 2880\n")
  arrays = gmia.data.load("celeb_a", data_dir=str(tmp_path / "tfds"), manual_dir=str(root),
                          resolution=16)
  by_photo = dict(zip(arrays.photo_id.tolist(), arrays.identity.tolist()))
  assert by_photo == {0: 1, 1: 0, 2: 1}  # Names sorted as strings: "17" < "2880".
  # The face crop GANs take of CelebA's aligned 178x218 photos: the 148 px square whose top
  # left corner is at x 15, y 40, here cut from the decoded photo by hand and resized.
  decoded = np.asarray(Image.open(root / "img_align_celeba" / "000002.jpg").convert("RGB"))
  face = Image.fromarray(decoded[40:40 + 148, 15:15 + 148])
  np.testing.assert_array_equal(arrays.images[arrays.photo_id == 1][0],
                                np.asarray(face.resize((16, 16), Image.LANCZOS)))


def test_celeb_a_bad_identity_line(tmp_path):
  root = tmp_path / "celeba"
  _write_photo(str(root / "img_align_celeba" / "000001.jpg"))
  (root / "identity_CelebA.txt").write_text("000001.jpg\n")
  with pytest.raises(ValueError, match="identity_CelebA.txt:1"):
    folders.collection_photos("celeb_a", str(root))


@pytest.mark.parametrize("name", ["identity_folder", "lfw", "vggface2", "celeb_a"])
def test_missing_manual_dir_gives_instructions(tmp_path, name):
  with pytest.raises(FileNotFoundError, match="manual_dir"):
    gmia.data.load(name, data_dir=str(tmp_path), manual_dir=str(tmp_path / "absent"))


def test_folder_without_photos(tmp_path):
  (tmp_path / "empty" / "someone").mkdir(parents=True)
  with pytest.raises(ValueError, match="no photos"):
    gmia.data.load("identity_folder", data_dir=str(tmp_path), manual_dir=str(tmp_path / "empty"))


def test_identity_folder_reads_photos_as_a_viewer_shows_them(tmp_path, caplog):
  root, rng = tmp_path / "people", np.random.default_rng(5)
  upright = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  gradient = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
  rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
  rgba[:8, :, 3] = 0  # The top half is transparent: it shows the white background.
  opaque = rgba[..., 3:] / 255.0
  shown = {"turned.png": upright, "gray16.png": np.repeat((gradient >> 8)[..., None], 3, -1),
           "clear.png": np.rint(rgba[..., :3] * opaque + 255 * (1 - opaque))}
  ann = root / "ann"
  (ann / "x.jpg").mkdir(parents=True)  # A folder named like a photo, with a photo in it.
  _write_photo(str(ann / "x.jpg" / "inside.png"))
  turned = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
  exif = turned.getexif()
  exif[0x0112] = 6  # Displayed turned 90 degrees clockwise: upright again.
  turned.save(ann / "turned.png", exif=exif)
  Image.fromarray(gradient).save(ann / "gray16.png")
  Image.fromarray(rgba, "RGBA").save(ann / "clear.png")
  (ann / "broken.png").write_bytes((ann / "clear.png").read_bytes()[:60])
  (ann / "._turned.png").write_bytes(b"\0\5\26\7")  # macOS resource fork: hidden, not a photo.
  _write_photo(str(root / ".thumbnails" / "t.png"))
  _write_photo(str(root / "bob" / "b.jpg"))
  with caplog.at_level(logging.INFO):
    arrays = gmia.data.load("identity_folder", data_dir=str(tmp_path / "tfds"),
                            manual_dir=str(root), resolution=8)
  assert "broken.png: cannot decode" in caplog.text
  assert "4 photos used, 1 skipped" in caplog.text
  assert folders.identity_names("identity_folder", str(root)) == ["ann", "bob"]
  assert len(arrays) == 4 and 0 not in arrays.photo_id  # Photo 0, broken.png, is skipped.
  for photo_id, name in enumerate(["broken.png", "clear.png", "gray16.png", "turned.png"]):
    if name in shown:
      expected = Image.fromarray(shown[name].astype(np.uint8)).resize((8, 8), Image.LANCZOS)
      np.testing.assert_allclose(arrays.images[arrays.photo_id == photo_id][0],
                                 np.asarray(expected), atol=1, err_msg=name)
