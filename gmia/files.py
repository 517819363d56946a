"""Atomic file writes: a temporary file in the target folder, then a rename.

A reader (or a resumed run) never sees a half-written file, and a crash mid-write leaves the
previous version in place. A failed write removes its temporary file; one left by a killed
process is named `.NAME` + TEMPORARY_MARK + random, which gmia.workdir removes on the next start.
Files get the permissions `open` would give them (0666 less the umask).
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Mapping

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
