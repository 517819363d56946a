"""The checks every DP trainer's tests apply (the GAN's and the DDPM's): the guarantee a run
records, the same run on several devices, and budgets refused before any training.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import jax
import numpy as np
import pytest

from gmia.checkpoint import Checkpointer
from gmia.privacy import accounting
from tests.resume_check import final_checkpoint


def check_recorded_guarantee(workdir: str, state: dict, kind: str, trained: tuple[str, ...],
                             config, *, steps: int, noisy_steps: int, r1_steps: int,
                             people: int, rate: float) -> dict:
  """Every array of `trained` moved between the run's two checkpoints (steps / 2, steps), and
  its privacy metadata states the config's guarantee, recomputes with dp-accounting, and is the
  same in every checkpoint. Returns the metadata."""
  checkpointer = Checkpointer(workdir)
  half, meta = checkpointer.restore_replicated(steps // 2, kind=kind)
  for group in trained:
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), half[group], state[group])
    assert all(jax.tree.leaves(moved)), group
  privacy = meta["privacy"]
  assert privacy["steps"] == noisy_steps and privacy["r1_steps"] == r1_steps
  assert privacy["people"] == people and privacy["sampling_rate"] == rate
  assert privacy["clip_norm"] == config.privacy.clip_norm
  assert privacy["delta"] == config.privacy.delta
  assert privacy["accountant"] == config.privacy.accountant
  assert 0.9 * config.privacy.target_epsilon < privacy["epsilon"] <= config.privacy.target_epsilon
  assert accounting.epsilon_from_metadata(privacy) == pytest.approx(privacy["epsilon"], rel=1e-12)
  assert checkpointer.restore_meta(steps)["privacy"] == privacy
  return privacy


def check_same_run(workdir: str, result: dict, num_devices: int) -> None:
  """The final checkpoint of a run on `num_devices` devices (`result`: final_checkpoint's and
  its num_devices) equals the one in `workdir` to 1e-4."""
  assert int(result.pop("num_devices")) == num_devices
  want = final_checkpoint(workdir)
  assert want.keys() == result.keys()
  for name in want:
    np.testing.assert_allclose(result[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)


def check_budgets_refused(train: Callable, config_for: Callable, workdir: str, tmp_path,
                          *, steps: int, longer_steps: int) -> None:
  """A copy of the finished run in `workdir` resumed for `longer_steps` at the noise it started
  with, and a fresh run at a noise multiplier of 0.1, are both refused before training."""
  longer = str(tmp_path / "longer")
  shutil.copytree(workdir, longer)
  with pytest.raises(ValueError, match="which a resumed run keeps.*budget exceeded"):
    train(config_for(num_steps=longer_steps), longer)
  assert Checkpointer(longer).all_steps() == [steps // 2, steps]
  too_little_noise = config_for()
  too_little_noise.privacy.noise_multiplier = 0.1
  with pytest.raises(ValueError, match="budget exceeded"):
    train(too_little_noise, str(tmp_path / "noise"))
  assert not os.path.exists(tmp_path / "noise" / "checkpoints")
