"""The config vocabulary every trainer shares, and what a resumed run may change.

Every trainer's config starts from `default_config()`: the seed, when to log, evaluate and
checkpoint, and how many checkpoints to keep. Single-phase trainers add `batch_size`,
`num_steps` and an `optimizer` block under those names.

A workdir holding a checkpoint is continued only by the same computation: every config field
must equal the checkpoint's except the ones that only say how long a run lasts or how it
reports (`RESUMABLE`, plus what the task adds). A new field is guarded by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

# Fields any resumed run may change: reporting, and where the data files are (not which data).
RESUMABLE = frozenset({"log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                       "data.data_dir", "data.manual_dir"})


def default_config(evaluated: bool = True) -> ml_collections.ConfigDict:
  """The fields of every trainer's config that the loop reads (`eval_every` only for trainers
  with a held-out evaluation)."""
  config = ml_collections.ConfigDict({
      "seed": 0,
      "log_every": 100,          # A progress line every so many steps (and at every evaluation).
      "checkpoint_every": 1000,  # And at the end of every phase.
      "keep_checkpoints": 3,
  })
  if evaluated:
    config.eval_every = 0        # Held-out evaluation every so many steps; 0: at the end only.
  return config


def check_schedule(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first schedule field that is not a sane count."""
  for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if config[name] < 1:
      raise ValueError(f"config.{name} must be positive, got {config[name]}")
  if config.get("eval_every", 0) < 0:
    raise ValueError(f"config.eval_every must be 0 (at the end only) or positive, got "
                     f"{config.eval_every}")


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any],
                    resumable: Iterable[str] = ()) -> None:
  """Raises ValueError naming the first field on which two configs (as JSON) differ, fields in
  RESUMABLE and `resumable` aside: a workdir of another computation must not be continued."""
  allowed = RESUMABLE | frozenset(resumable)
  saved_fields, current_fields = _flat(saved), _flat(current)
  for key in sorted(saved_fields.keys() | current_fields.keys()):
    if key in allowed or any(key.startswith(prefix + ".") for prefix in allowed):
      continue
    if saved_fields.get(key) != current_fields.get(key):
      raise ValueError(
          f"the workdir holds a checkpoint of another config: {key} is "
          f"{saved_fields.get(key)!r} there but {current_fields.get(key)!r} now; use a fresh "
          "--workdir or the original config")


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{dotted path: leaf} of a nested dict."""
  leaves = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      leaves.update(_flat(value, f"{prefix}{name}."))
    else:
      leaves[prefix + name] = value
  return leaves
