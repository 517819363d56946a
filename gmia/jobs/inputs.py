"""What an attack's results were computed from, recorded in its workdir (`inputs.json`).

The record holds content fingerprints (the generator's parameters or file, the matcher's, the
photos' bytes) and every setting that changes a result. A rerun in the same workdir whose
inputs differ is refused, naming the first difference, or starts over with `overwrite`: results
of other inputs are never reported, and never silently mixed into a resumed run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from absl import logging

from gmia import files, parallel

INPUTS_FILE = "inputs.json"


def check_inputs(workdir: str, inputs: Mapping[str, Any], *, overwrite: bool,
                 outputs: Sequence[str]) -> None:
  """Records `inputs` in `workdir` (a workdir holding results of the same inputs resumes or
  extends them). With other inputs recorded: ValueError, or with `overwrite` the job's
  `outputs` (files and folders of the workdir) are deleted first."""
  path = os.path.join(workdir, INPUTS_FILE)
  # As the file will hold it (strict JSON: NaN as null, keys as strings), so a rerun with the
  # same inputs compares equal to the record.
  current = json.loads(json.dumps(files.strict_json(inputs), allow_nan=False))
  saved = files.read_json(path) if os.path.exists(path) else None
  # Every process has read the record before process 0 writes it, so all take the same branch.
  parallel.barrier(f"inputs of {workdir} read")
  if saved == current:
    return
  if saved is not None:
    key = _first_difference(saved, current)
    if not overwrite:
      raise ValueError(f"{workdir} holds results of other inputs ({key}: {_at(saved, key)!r} "
                       f"there, {_at(current, key)!r} now); use a fresh --workdir, or "
                       "--config.overwrite=True to start over")
    logging.warning("inputs changed (%s): deleting the results in %s", key, workdir)
    for name in outputs if jax.process_index() == 0 else ():  # One process deletes.
      target = os.path.join(workdir, name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)
  files.write_json(path, current)
  parallel.barrier(f"inputs of {workdir}")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
  return prefix.rstrip(".") or "inputs"


def _at(tree: Any, dotted: str) -> Any:
  for part in dotted.split(".") if dotted != "inputs" else []:
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree
