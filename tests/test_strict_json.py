"""Every JSON file gmia writes is strict JSON: NaN and infinities become null, which any reader
(a browser's JSON.parse included) accepts; finite numbers and numpy values keep their values."""

import json
import math

import numpy as np
import pytest

from gmia import files


def strict_loads(text: str):
  """json.loads that refuses NaN, Infinity and -Infinity, as JSON.parse does."""
  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")
  return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null(tmp_path):
  payload = {
      "same_person_min": float("nan"),
      "upper": math.inf,
      "lower": np.float32(-np.inf),
      "scores": np.array([0.5, np.nan, np.inf], np.float32),
      "nested": [{"p": np.float64(np.nan)}, (1.0, -math.inf)],
  }
  path = str(tmp_path / "report.json")
  files.write_json(path, payload)
  with open(path) as handle:
    text = handle.read()
  assert "NaN" not in text and "Infinity" not in text
  assert strict_loads(text) == {"same_person_min": None, "upper": None, "lower": None,
                                "scores": [0.5, None, None], "nested": [{"p": None}, [1.0, None]]}


def test_finite_values_are_written_as_json_would(tmp_path):
  """Against the standard library's own encoding of the same values converted by hand."""
  rng = np.random.default_rng(0)
  values = rng.normal(size=5)
  payload = {"auc": np.float32(0.1), "values": values, "count": np.int64(7), "flag": np.bool_(1),
             "name": np.str_("x"), "pairs": ((1, 2), [3.5]), "ids": {3: "a", np.int32(4): None}}
  expected = {"auc": float(np.float32(0.1)), "values": [float(v) for v in values], "count": 7,
              "flag": True, "name": "x", "pairs": [[1, 2], [3.5]], "ids": {"3": "a", "4": None}}
  path = str(tmp_path / "r.json")
  files.write_json(path, payload)
  with open(path) as handle:
    text = handle.read()
  assert text == json.dumps(expected, indent=2, sort_keys=True) + "\n"
  assert strict_loads(text) == expected


def test_other_types_are_refused_naming_the_type(tmp_path):
  with pytest.raises(TypeError, match="not JSON-serialisable: <class 'set'>"):
    files.write_json(str(tmp_path / "r.json"), {"ids": {1, 2}})
  assert not list(tmp_path.iterdir())
