"""Content fingerprints: short hashes that say whether two runs used the same inputs."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def tree_digest(tree: Any) -> str:
  """sha256 (hex, 16 digits) of a pytree's structure, shapes, dtypes and values: equal exactly
  when every array is bitwise equal."""
  digest = hashlib.sha256()
  leaves, structure = jax.tree_util.tree_flatten_with_path(tree)
  digest.update(str(structure).encode())
  for path, leaf in leaves:
    value = np.asarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()[:16]
