"""Atomic file writes: a temporary file in the target folder, then a rename.

A reader (or a resumed run) never sees a half-written file, and a crash mid-write leaves the
previous version in place.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping

import numpy as np


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes `data` to `path` through a temporary file in the same folder."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  mode = "wb" if isinstance(data, bytes) else "w"
  with tempfile.NamedTemporaryFile(mode, dir=directory, delete=False) as handle:
    handle.write(data)
  os.replace(handle.name, path)


def write_json(path: str, payload: Mapping) -> None:
  """Pretty JSON (numpy scalars and arrays converted), written atomically."""
  write_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON-serialisable: {type(value)}")


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """numpy .npz, written atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomic(path, buffer.getvalue())


def read_json(path: str) -> dict:
  """Reads a JSON file, naming the file when it is corrupt."""
  with open(path) as handle:
    try:
      return json.load(handle)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path} is not valid JSON: {error}") from error
