"""Report files: atomic writes, CSV and JSON contents, figures that open."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from gmia import files, viz



def test_scores_csv_and_json(tmp_path):
  files.write_csv(str(tmp_path / "s.csv"), {"identity": [3, 5], "score": [0.5, 0.25]})
  with open(tmp_path / "s.csv") as handle:
    rows = list(csv.reader(handle))
  assert rows == [["identity", "score"], ["3", "0.5"], ["5", "0.25"]]
  files.write_json(str(tmp_path / "r.json"), {"auc": np.float32(0.75), "ids": np.arange(2)})
  assert json.loads((tmp_path / "r.json").read_text()) == {"auc": 0.75, "ids": [0, 1]}
  with pytest.raises(ValueError, match="different lengths"):
    files.write_csv(str(tmp_path / "bad.csv"), {"a": [1], "b": [1, 2]})
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
  viz.plot_roc(str(tmp_path / "roc.png"), {"best": (scores, labels)}, "test")
  assert Image.open(tmp_path / "roc.png").size[0] > 500
  generated = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  photos = rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
  viz.save_matches(str(tmp_path / "m.png"), generated, photos, ["a", "b"],
                      [["x", "y", "z"]] * 2)
  picture = np.asarray(Image.open(tmp_path / "m.png"))
  np.testing.assert_array_equal(picture[2:2 + 96:3, 2:2 + 96:3], generated[0])


def test_roc_chance_is_the_diagonal_on_the_log_axis_and_unresolved_fprs_are_marked():
  labels = np.arange(45) < 20  # 25 non-members: FPRs below 1/25 resolve nothing.
  scores = np.random.default_rng(1).normal(size=45) + labels
  figure = viz.roc_figure({"best": (scores, labels)}, "test")
  linear, log = figure.axes
  for axes in (linear, log):
    chance = next(line for line in axes.get_lines() if line.get_label() == "chance")
    x, y = chance.get_xdata(), chance.get_ydata()
    np.testing.assert_array_equal(x, y)
    assert x.min() <= 1e-3 and x.max() == 1
    # Dense enough that the drawn segments stay on TPR = FPR at every decade of the log axis.
    assert np.max(np.diff(np.log10(x))) < 0.05
  (span,) = [p for p in log.patches if "not resolved" in p.get_label()]
  left, right = span.get_x(), span.get_x() + span.get_width()
  assert "1/25" in span.get_label() and left <= 1e-3 and right == pytest.approx(1 / 25)
  viz.plt.close(figure)
