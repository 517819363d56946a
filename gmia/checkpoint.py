"""Orbax checkpoints that other JAX programs can read without gmia.

A checkpoint step holds two items: `state`, a plain nested dict of arrays (params, EMA params,
optimiser states, step, RNG key data, ...), and `meta`, JSON (the config, the identity split, and
whatever a stage needs to rebuild its models). Saves are atomic (Orbax writes to a temporary
folder and renames), so a killed run never leaves a half-written step behind.

Reading one without gmia:

    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(path, item_names=("state", "meta"))
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    params, config = restored.state["params"], restored.meta["config"]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "meta")


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))), force=True)

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `(state, meta)` at `step` (latest when None) into the structure of `abstract_state`.

    `abstract_state` comes from `jax.eval_shape` (with shardings where the topology changed).
    """
    step = self._resolve(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as error:
      raise ValueError(
          f"checkpoint step {step} in {self.directory} does not match the model being restored "
          f"(a checkpoint of another config or architecture?): {error}") from error
    return restored.state, dict(restored.meta)

  def restore_meta(self, step: int | None = None) -> dict:
    """Reads only the JSON metadata of `step` (latest when None)."""
    step = self._resolve(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step


def check_config_matches(saved: Mapping[str, Any], current: Mapping[str, Any],
                         keys: Iterable[str]) -> None:
  """Raises ValueError naming the first of `keys` on which two configs differ.

  Guards resumption: a workdir holding a checkpoint of another architecture must not be
  silently continued (or crash deep inside Orbax). Keys are dotted paths ("model.resolution").
  """
  for key in keys:
    saved_value, current_value = _lookup(saved, key), _lookup(current, key)
    if saved_value != current_value:
      raise ValueError(
          f"the workdir holds a checkpoint of another config: {key} is {saved_value!r} there "
          f"but {current_value!r} now; use a fresh --workdir or the original config")


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
  node: Any = tree
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def abstract_like(tree: Any) -> Any:
  """The abstract (shape/dtype/sharding) structure of a concrete pytree, for `restore`."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
