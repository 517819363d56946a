"""Atomic file writes: a temporary file in the target folder, then a rename.

A reader (or a resumed run) never sees a half-written file, and a crash mid-write leaves the
previous version in place. A failed write removes its temporary file; one left by a killed
process is named `.NAME` + TEMPORARY_MARK + random, which gmia.workdir removes on the next start.
Files get the permissions `open` would give them (0666 less the umask).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np


TEMPORARY_MARK = ".gmia-tmp-"


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes `data` (str as UTF-8) to `path` through a temporary file in the same folder.

  In a multi-process job every process computes the same reports and only process 0 writes
  them (the others return at once), so a shared workdir gets one copy of every file.
  """
  if jax.process_index() != 0:
    return
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory, f".{name}{TEMPORARY_MARK}{secrets.token_hex(4)}")
  # os.open applies the umask to 0o666; tempfile would make the file private (0600).
  handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(handle, "wb") as stream:
      stream.write(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_json(path: str, payload: Mapping) -> None:
  """Pretty strict JSON, written atomically: numpy scalars and arrays become numbers and lists,
  and a number that is not finite (NaN, inf) becomes null, since a browser's JSON.parse and
  most other readers reject the NaN and Infinity that Python's json would write."""
  text = json.dumps(strict_json(payload), indent=2, sort_keys=True, allow_nan=False)
  write_atomic(path, text + "\n")


def strict_json(value: Any) -> Any:
  """`value` as plain JSON values: dicts (numpy scalar keys as Python ones), lists (from
  tuples and arrays), str, int, bool, None and finite floats; NaN and inf become None.
  TypeError names the first other type."""
  if isinstance(value, np.ndarray):
    value = value.tolist()
  elif isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if value is None or isinstance(value, (str, int)):
    return value
  if isinstance(value, Mapping):
    return {key.item() if isinstance(key, np.generic) else key: strict_json(item)
            for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(item) for item in value]
  raise TypeError(f"not JSON-serialisable: {type(value)}")


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """numpy .npz, written atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomic(path, buffer.getvalue())


def write_csv(path: str, columns: Mapping[str, Sequence]) -> None:
  """A CSV table written atomically; `columns` maps header -> values (all the same length)."""
  lengths = {len(v) for v in columns.values()}
  if len(lengths) != 1:
    raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(list(columns))
  writer.writerows(zip(*columns.values()))
  write_atomic(path, buffer.getvalue())


def read_json(path: str) -> dict:
  """Reads a JSON file, naming the file when it is corrupt."""
  with open(path) as handle:
    try:
      return json.load(handle)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path} is not valid JSON: {error}") from error
