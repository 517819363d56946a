"""Orbax checkpoints that other JAX programs can read without gmia.

A checkpoint step holds two items: `state`, a plain nested dict of arrays (params, EMA params,
optimiser states, step, RNG key data, ...), and `meta`, JSON (the config, the identity split, and
whatever a stage needs to rebuild its models). Saves are atomic (Orbax writes to a temporary
folder and renames), so a killed run never leaves a half-written step behind.

Every step's folder also holds `checksums.json`: the size and SHA-256 of each of its files,
written once Orbax has finalised the step (a save returns only then, so its failure, e.g. a full
disk, is raised by that save). Restores verify them first: a truncated, missing or altered file
is a one-line CorruptCheckpointError naming the step and the file, never a silent load of wrong
values. A run resuming from a workdir whose newest steps fail the check moves them aside and
continues from the newest intact one (`resume_step`). Old steps are deleted only once a newer
one is verified on disk.

Reading one without gmia:

    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(path, item_names=("state", "meta"))
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    params, config = restored.state["params"], restored.meta["config"]
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from gmia import files, parallel, progress
from gmia.workdir import remove_temporaries

ITEMS = ("state", "meta")
CHECKSUMS = "checksums.json"  # In each step's folder: {"files": {path: {"size", "sha256"}}}.
REJECTED_DIR = "rejected_checkpoints"  # Beside checkpoints/: steps a resumed run set aside.


class CorruptCheckpointError(ValueError):
  """A checkpoint step whose files are missing or differ from the checksums saved with it."""


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `workdir/checkpoints`.

  `read_only` opens an existing run without creating anything (a missing one is an error).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoints in {self.workdir}: not a trained gmia workdir "
                              "(or not trained yet)")
    self._max_to_keep = max_to_keep
    self._verified: set[int] = set()
    # A save waits for Orbax's background writes, so that a failure is raised by the failing
    # save; Orbax keeps every step, and `save` deletes the old ones once the new one is on disk.
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only,
            **({"save_interval_steps": 0} if read_only else {})),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON-serialisable) at `step`; returns once
    the step and its checksums are on disk, then deletes the steps beyond the newest
    `max_to_keep`. A failed save (a full disk) removes what it wrote and raises OSError naming
    the step."""
    if os.path.isdir(self.step_path(step)):
      raise FileExistsError(f"checkpoint step {step} already exists in {self.directory}")
    try:
      with progress.library_errors_held():
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))), force=True)
        self._manager.wait_until_finished()
      if not os.path.isdir(self.step_path(step)):
        raise OSError("Orbax did not finalise it (its log says why)")
      if jax.process_index() == 0:
        files.write_json(os.path.join(self.step_path(step), CHECKSUMS),
                         {"files": _checksums(self.step_path(step))})
    except (OSError, ValueError) as error:
      self._discard(step)
      reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
      raise OSError(f"could not save checkpoint step {step} in {self.directory}: {reason}"
                    ) from error
    self._verified.add(step)
    for old in self.all_steps()[:-self._max_to_keep]:
      self._manager.delete(old)

  def _discard(self, step: int) -> None:
    """Removes what a failed save of `step` left: Orbax's temporary folders, and the step itself
    when it was finalised without its checksums."""
    if jax.process_index() == 0:
      remove_temporaries(self.directory)
      shutil.rmtree(self.step_path(step), ignore_errors=True)
    self._manager.reload()

  def verify(self, step: int, item: str | None = None) -> None:
    """Raises CorruptCheckpointError naming `step` and its first file that is missing or differs
    from the checksums saved with it (with `item`, only that item's files and the step's own)."""
    if step in self._verified:
      return
    folder, where = self.step_path(step), f"checkpoint step {step} in {self.directory}"
    try:
      recorded = files.read_json(os.path.join(folder, CHECKSUMS))["files"]
    except FileNotFoundError:
      raise CorruptCheckpointError(f"{where} is incomplete: it has no {CHECKSUMS} (the run "
                                   "was killed while saving it?)") from None
    except (ValueError, KeyError, TypeError) as error:
      raise CorruptCheckpointError(f"{where} is corrupt: unreadable {CHECKSUMS} ({error})"
                                   ) from None
    if item is not None:
      recorded = {path: saved for path, saved in recorded.items()
                  if os.sep not in path or path.startswith(item + os.sep)}
    for path, saved in recorded.items():  # Sizes first: they cost no reading.
      full = os.path.join(folder, path)
      if not os.path.isfile(full):
        raise CorruptCheckpointError(f"{where} is corrupt: {path} is missing")
      if os.path.getsize(full) != saved["size"]:
        raise CorruptCheckpointError(f"{where} is corrupt: {path} has {os.path.getsize(full)} "
                                     f"bytes, {saved['size']} when saved")
    for path, saved in recorded.items():
      if _sha256(os.path.join(folder, path)) != saved["sha256"]:
        raise CorruptCheckpointError(f"{where} is corrupt: {path} differs from its checksum")
    if item is None:
      self._verified.add(step)

  def resume_step(self) -> int | None:
    """The newest step that passes `verify`, for a run to continue from (None: start afresh).
    Newer steps that fail it are moved to workdir/rejected_checkpoints/ with a warning; the
    resumed run repeats their steps (and reproduces them)."""
    for step in reversed(self.all_steps()):
      try:
        self.verify(step)
        return step
      except CorruptCheckpointError as error:
        rejected = self._reject(step)
        logging.warning("%s; moved it to %s and resuming from an earlier step", error, rejected)
    return None

  def _reject(self, step: int) -> str:
    """Moves `step` out of the run, to workdir/rejected_checkpoints/STEP[.N]; returns where."""
    rejected, again = os.path.join(self.workdir, REJECTED_DIR, str(step)), 0
    while os.path.exists(rejected):  # A step rejected before keeps its folder.
      again += 1
      rejected = os.path.join(self.workdir, REJECTED_DIR, f"{step}.{again}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(rejected), exist_ok=True)
      os.rename(self.step_path(step), rejected)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"gmia rejected checkpoint step {step}")
    self._manager.reload()
    return rejected

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `(state, meta)` at `step` (latest when None) into the structure of `abstract_state`.

    `abstract_state` comes from `jax.eval_shape` (with shardings where the topology changed).
    The step's checksums are verified first (CorruptCheckpointError).
    """
    step = self._resolve(step)
    self.verify(step)
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
    be the kind of run the checkpoint records. A corrupt step is an error, not skipped: a loader
    must not silently use an older model than the one asked for."""
    step = self._resolve(step)
    self.verify(step)
    meta = self.restore_meta(step)
    check_kind(meta, kind, self.directory)
    sharding = parallel.replicated(mesh or parallel.make_mesh())
    saved = self._manager.item_metadata(step)["state"].tree
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved,
        is_leaf=lambda leaf: isinstance(leaf, ocp.metadata.ArrayMetadata))
    return self.restore(step, abstract)[0], meta

  def restore_meta(self, step: int | None = None) -> dict:
    """Reads only the JSON metadata of `step` (latest when None), verifying only its files."""
    step = self._resolve(step)
    self.verify(step, item="meta")
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def wait(self) -> None:
    """Blocks until Orbax's pending work is done (a save already waits for its own)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step


def _sha256(path: str) -> str:
  with open(path, "rb") as handle:
    return hashlib.file_digest(handle, "sha256").hexdigest()


def _checksums(folder: str) -> dict[str, dict[str, Any]]:
  """{path relative to `folder`: {"size", "sha256"}} of every file under it but CHECKSUMS."""
  sums = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      relative = os.path.relpath(path, folder)
      if relative != CHECKSUMS:
        sums[relative] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  return dict(sorted(sums.items()))


def check_kind(meta: Mapping[str, Any], kind: str | None, where: str) -> None:
  """Raises ValueError when a checkpoint's metadata records another kind of run than `kind`."""
  found = meta.get("kind")
  if kind is not None and found is not None and found != kind:
    raise ValueError(f"{where} holds a {found} checkpoint, not a {kind}: check the path")
