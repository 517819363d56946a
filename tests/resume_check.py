"""The resume check every trainer's tests apply: only the remaining steps run, and the result
equals the uninterrupted run's.

Training is a pure function of the seed and the step, so a trainer that ignored its checkpoint
and retrained from step 0 would reach the same state; counting the steps actually run catches
it, comparing every array of the final checkpoints catches a resume from the wrong state.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import jax
import numpy as np

from gmia.checkpoint import Checkpointer


def final_checkpoint(workdir: str) -> dict[str, np.ndarray]:
  """{path: array} of the newest checkpoint's state."""
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    state, _ = checkpointer.restore_replicated()
  finally:
    checkpointer.close()
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def check_resume(train: Callable, config, finished_workdir: str, copy_to: str) -> None:
  """Copies a finished run, deletes its newest checkpoint (as if killed right after the one
  before) and reruns `train(config, workdir)` there."""
  shutil.copytree(finished_workdir, copy_to)
  steps = Checkpointer(copy_to).all_steps()
  assert len(steps) >= 2, f"the run kept {steps}: nothing to resume from"
  shutil.rmtree(os.path.join(copy_to, "checkpoints", str(steps[-1])))
  result = train(config, copy_to)
  assert result.resumed_from == steps[-2]
  assert result.steps_run == steps[-1] - steps[-2]
  want, got = final_checkpoint(finished_workdir), final_checkpoint(copy_to)
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
