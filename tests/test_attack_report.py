"""Report files: atomic writes, CSV and JSON contents, figures that open."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from gmia import files
from gmia.attacks import report


def test_scores_csv_and_json(tmp_path):
  report.write_scores_csv(str(tmp_path / "s.csv"), {"identity": [3, 5], "score": [0.5, 0.25]})
  with open(tmp_path / "s.csv") as handle:
    rows = list(csv.reader(handle))
  assert rows == [["identity", "score"], ["3", "0.5"], ["5", "0.25"]]
  files.write_json(str(tmp_path / "r.json"), {"auc": np.float32(0.75), "ids": np.arange(2)})
  assert json.loads((tmp_path / "r.json").read_text()) == {"auc": 0.75, "ids": [0, 1]}
  with pytest.raises(ValueError, match="different lengths"):
    report.write_scores_csv(str(tmp_path / "bad.csv"), {"a": [1], "b": [1, 2]})
  assert not (tmp_path / "bad.csv").exists()


def test_failed_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "r.json"
  files.write_json(str(path), {"v": 1})
  with pytest.raises(TypeError):
    files.write_json(str(path), {"v": object()})
  assert json.loads(path.read_text()) == {"v": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_figures(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.arange(40) < 20
  scores = rng.normal(size=40) + labels
  report.plot_roc(str(tmp_path / "roc.png"), {"best": (scores, labels)}, "test")
  assert Image.open(tmp_path / "roc.png").size[0] > 500
  generated = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  photos = rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
  report.save_matches(str(tmp_path / "m.png"), generated, photos, ["a", "b"],
                      [["x", "y", "z"]] * 2)
  picture = np.asarray(Image.open(tmp_path / "m.png"))
  np.testing.assert_array_equal(picture[2:2 + 96:3, 2:2 + 96:3], generated[0])
