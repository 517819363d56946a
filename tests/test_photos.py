"""Photo files decoded as a viewer shows them, bad files named and skipped, folders listed."""

import csv
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gmia import files, parallel
from gmia.attacks import people as people_lib

from gmia.data import folders, photos
from gmia.faces import embedder as embedder_lib
from gmia.faces import matchers

BACKGROUND = (0, 128, 255)  # Not white: shows that the stated background is the one used.


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(samples: np.ndarray, color_type: int, depth: int = 16, size=None) -> bytes:
  """A PNG written from the specification (Pillow cannot write 16-bit colour): samples
  u16[H, W, C] big-endian, filter 0 on each row; `size` overrides the declared width, height."""
  height, width = samples.shape[:2]
  rows = samples.reshape(height, width, -1).astype(">u2" if depth == 16 else np.uint8)
  raw = b"".join(b"\0" + row.tobytes() for row in rows)
  header = struct.pack(">IIBBBBB", *(size or (width, height)), depth, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
          + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _gray(values: np.ndarray) -> np.ndarray:
  return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def _over(rgb: np.ndarray, alpha: np.ndarray, background=BACKGROUND) -> np.ndarray:
  """Straight alpha compositing in float64: rgb * a + background * (1 - a)."""
  a = alpha[..., None] / 255.0
  return rgb * a + np.asarray(background, np.float64) * (1 - a)


def test_sixteen_bit_gray_png_scales_to_its_high_byte(tmp_path):
  gradient = np.linspace(0, 65535, 5 * 7).round().astype(np.uint16).reshape(5, 7)
  path = str(tmp_path / "gray16.png")
  Image.fromarray(gradient).save(path)
  assert Image.open(path).mode == "I;16"
  decoded = photos.decode(path)
  np.testing.assert_array_equal(decoded, _gray(gradient // 256))
  assert decoded.dtype == np.uint8 and decoded.shape == (5, 7, 3)


@pytest.mark.parametrize("dtype", [">u2", "<u2", np.int32])
def test_sixteen_bit_gray_tiff_in_each_pillow_mode(tmp_path, dtype):
  values = np.arange(0, 65536, 4099).astype(dtype).reshape(4, 4)
  path = str(tmp_path / "gray.tif")
  Image.fromarray(values).save(path)
  assert Image.open(path).mode in ("I;16B", "I;16", "I")
  np.testing.assert_array_equal(photos.decode(path), _gray(values.astype(np.int64) // 256))


def test_sixteen_bit_colour_pngs(tmp_path):
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 65536, (3, 5, 4), dtype=np.uint16)
  rgba[0, 0, 3], rgba[0, 1, 3] = 0, 65535
  high = rgba.astype(np.float64) // 256
  cases = {"rgb": (rgba[..., :3], 2, high[..., :3]),
           "rgba": (rgba, 6, _over(high[..., :3], high[..., 3])),
           "la": (rgba[..., [0, 3]], 4, _over(high[..., [0, 0, 0]], high[..., 3]))}
  for name, (samples, color_type, expected) in cases.items():
    path = tmp_path / f"{name}16.png"
    path.write_bytes(_png(samples, color_type))
    decoded = photos.decode(str(path), background=BACKGROUND)
    np.testing.assert_allclose(decoded, expected, atol=1, err_msg=name)
    if color_type != 2:  # Fully transparent is the background, fully opaque the colour.
      np.testing.assert_array_equal(decoded[0, 0], BACKGROUND, err_msg=name)
      np.testing.assert_array_equal(decoded[0, 1], expected[0, 1].round(), err_msg=name)


@pytest.mark.parametrize("orientation, turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
  # Blocks of flat colour survive JPEG well enough to tell the four rotations apart.
  blocks = np.random.default_rng(orientation).integers(0, 256, (2, 3, 3), dtype=np.uint8)
  upright = blocks.repeat(8, axis=0).repeat(8, axis=1)
  stored = np.rot90(upright, -turns)  # What a camera held sideways writes.
  for extension, tolerance in ((".png", 0), (".jpg", 12)):
    picture = Image.fromarray(np.ascontiguousarray(stored))
    exif = picture.getexif()
    exif[0x0112] = orientation
    path = str(tmp_path / f"turned{extension}")
    picture.save(path, exif=exif, quality=95, subsampling=0)
    decoded = photos.decode(path)
    assert decoded.shape == upright.shape, extension
    assert np.abs(decoded.astype(int) - upright).max() <= tolerance, extension


def _palette(transparent: bool) -> tuple[Image.Image, np.ndarray]:
  indices = np.array([[0, 1], [2, 1]], np.uint8)
  colours = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], np.uint8)
  picture = Image.fromarray(indices, "P")
  picture.putpalette(colours.ravel().tolist())
  expected = colours[indices].astype(np.float64)
  if transparent:
    picture.info["transparency"] = 1
    expected[indices == 1] = BACKGROUND
  return picture, expected


def _mode_cases():
  """name -> (picture, expected f64[H, W, 3] on BACKGROUND, file extension)."""
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
  rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
  gray, bits = rgba[..., 0], rgba[..., 1] > 127
  cmyk = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8).astype(np.float64)
  return {
      "L": (Image.fromarray(gray), _gray(gray), ".png"),
      "LA": (Image.fromarray(rgba[..., [0, 3]], "LA"), _over(_gray(gray), rgba[..., 3]), ".png"),
      "RGBA": (Image.fromarray(rgba, "RGBA"), _over(rgba[..., :3], rgba[..., 3]), ".png"),
      "1": (Image.fromarray(bits), _gray(bits * 255), ".png"),
      "P": (*_palette(False), ".png"),
      "P_transparent": (*_palette(True), ".png"),
      "P_transparent_gif": (*_palette(True), ".gif"),
      "CMYK": (Image.fromarray(cmyk.astype(np.uint8), "CMYK"),
               (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255, ".tif"),
  }


@pytest.mark.parametrize("name", sorted(_mode_cases()))
def test_each_mode_gives_rgb(tmp_path, name):
  picture, expected, extension = _mode_cases()[name]
  path = str(tmp_path / f"{name}{extension}")
  picture.save(path, **({"transparency": 1} if "transparent" in name else {}))
  assert Image.open(path).mode == picture.mode
  decoded = photos.decode(path, background=BACKGROUND)
  assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
  np.testing.assert_allclose(decoded, expected, atol=1)


def test_transparency_defaults_to_white(tmp_path):
  path = str(tmp_path / "clear.png")
  Image.new("RGBA", (3, 2), (200, 10, 10, 0)).save(path)
  np.testing.assert_array_equal(photos.decode(path), np.full((2, 3, 3), 255))


def _bad_files(folder) -> dict[str, str]:
  """file name -> a word its skip reason must contain."""
  good = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8))
  good.save(folder / "whole.png")
  data = (folder / "whole.png").read_bytes()
  (folder / "truncated.png").write_bytes(data[:len(data) // 2])
  good.save(folder / "whole.jpg")
  data = (folder / "whole.jpg").read_bytes()
  (folder / "truncated.jpg").write_bytes(data[:len(data) // 2])
  (folder / "corrupt.jpg").write_bytes(data[:200] + bytes(range(256)) * 4)
  (folder / "empty.jpg").write_bytes(b"")
  (folder / "text.png").write_text("a shopping list, not a photo")
  # Declares 20000x20000 pixels (400 M, over Pillow's limit) and holds one.
  (folder / "bomb.png").write_bytes(_png(np.zeros((1, 1)), 0, depth=8, size=(20_000, 20_000)))
  return {"truncated.png": "cannot decode", "truncated.jpg": "truncated",
          "corrupt.jpg": "cannot decode", "empty.jpg": "0 bytes", "text.png": "not an image",
          "bomb.png": "decompression bomb"}


def test_bad_files_are_named_skipped_and_raised_when_strict(tmp_path, caplog):
  bad = _bad_files(tmp_path)
  paths = photos.files_in(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    read = photos.Reader().read(paths)
  assert [p.rsplit("/", 1)[1] for p in read.paths] == ["whole.jpg", "whole.png"]
  assert all(image.shape == (32, 32, 3) for image in read.images)
  reasons = {path.rsplit("/", 1)[1]: reason for path, reason in read.skipped}
  assert sorted(reasons) == sorted(bad)
  for name, word in bad.items():
    assert word in reasons[name].lower(), (name, reasons[name])
    assert name in caplog.text
  assert read.summary() == f"2 photos used, {len(bad)} skipped"
  for name in bad:
    with pytest.raises(photos.UnreadablePhoto, match=name):
      photos.Reader(strict=True)(str(tmp_path / name))


def test_pixel_limit_is_a_reader_option(tmp_path):
  path = str(tmp_path / "a.png")
  Image.new("RGB", (20, 10)).save(path)
  assert photos.Reader(max_pixels=200)(path).shape == (10, 20, 3)
  with pytest.raises(photos.UnreadablePhoto, match="20x10 = 200 pixels, over the limit of 199"):
    photos.Reader(strict=True, max_pixels=199)(path)


def test_skipped_rows_write_as_csv(tmp_path):
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "text.jpg").write_text("x")
  read = photos.Reader().read(photos.files_in(str(tmp_path)))
  files.write_csv(str(tmp_path / "skipped.csv"), read.skipped_columns())
  with open(tmp_path / "skipped.csv") as handle:
    rows = [tuple(row.values()) for row in csv.DictReader(handle)]
  assert rows == [tuple(row) for row in read.skipped] and len(rows) == 2


def test_listing_ignores_hidden_files_folders_and_other_extensions(tmp_path):
  person = tmp_path / "people" / "ann"
  (person / "x.jpg").mkdir(parents=True)  # A folder named like a photo.
  names = ["A.JPG", "b.Png", "c.jpeg", "d.webp", "e.bmp", "f.tif", "g.TIFF", ".DS_Store",
           "._A.JPG", ".hidden.png", "notes.txt", "x.jpg.part"]
  for name in names:
    (person / name).write_bytes(b"")
  (tmp_path / "people" / ".thumbnails").mkdir()
  (tmp_path / "people" / ".thumbnails" / "t.jpg").write_bytes(b"")
  (tmp_path / "people" / "loose.jpg").write_bytes(b"")
  (tmp_path / "people" / "bob").mkdir()
  expected = [str(person / n) for n in sorted(["A.JPG", "b.Png", "c.jpeg", "d.webp", "e.bmp",
                                               "f.tif", "g.TIFF"])]
  assert photos.files_in(str(person)) == expected
  assert photos.identity_photos(str(tmp_path / "people")) == [(p, "ann") for p in expected]


def test_attack_people_are_read_through_the_reader(tmp_path):
  rng = np.random.default_rng(3)
  upright = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
  picture = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
  exif = picture.getexif()
  exif[0x0112] = 6
  picture.save(tmp_path / "turned.png", exif=exif)
  Image.fromarray(upright).save(tmp_path / "plain.png")
  (tmp_path / "broken.jpg").write_text("not a photo")
  flatten = matchers.Matcher("flatten", 8, {}, lambda _, crops: crops.reshape(len(crops), -1),
                             {"name": "flatten"})
  embedder = embedder_lib.FaceEmbedder(flatten, "none", (0.0, 0.0, 1.0, 1.0))
  entries = [(str(tmp_path / name), "ann", "target")
             for name in ("broken.jpg", "plain.png", "turned.png")]
  people = people_lib.photo_people(entries, embedder, parallel.make_mesh())
  np.testing.assert_array_equal(people.crops, np.stack([folders.fit_photo(upright, 8, None)] * 2))
  assert people.labels == [str(tmp_path / "plain.png"), str(tmp_path / "turned.png")]
  assert [path for path, _ in people.skipped] == [str(tmp_path / "broken.jpg")]
  np.testing.assert_allclose(people.refs.embeddings[0], people.refs.embeddings[1], atol=1e-6)
