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
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from gmia import parallel

ITEMS = ("state", "meta")


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `workdir/checkpoints`.

  `read_only` opens an existing run without creating anything (a missing one is an error).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoints in {os.path.abspath(workdir)}: not a trained "
                              "gmia workdir (or not trained yet)")
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                             read_only=read_only),
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

  def restore_replicated(self, step: int | None = None, *, kind: str | None = None,
                         mesh: Mesh | None = None) -> tuple[Any, dict]:
    """Restores `(state, meta)` at `step` (latest when None) with every array replicated over
    `mesh` (default: all devices), the structure read from the checkpoint itself: loading a
    trained model works whatever topology trained it. `kind` ("gan", "face_encoder", ...) must
    be the kind of run the checkpoint records."""
    step = self._resolve(step)
    meta = self.restore_meta(step)
    check_kind(meta, kind, self.directory)
    sharding = parallel.replicated(mesh or parallel.make_mesh())
    saved = self._manager.item_metadata(step)["state"].tree
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved,
        is_leaf=lambda leaf: isinstance(leaf, ocp.metadata.ArrayMetadata))
    return self.restore(step, abstract)[0], meta

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


def check_kind(meta: Mapping[str, Any], kind: str | None, where: str) -> None:
  """Raises ValueError when a checkpoint's metadata records another kind of run than `kind`."""
  found = meta.get("kind")
  if kind is not None and found is not None and found != kind:
    raise ValueError(f"{where} holds a {found} checkpoint, not a {kind}: check the path")
