"""Checkpoints round-trip, restore whatever topology saved them, name what they are, and open
without gmia."""

import hashlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jax

from gmia.checkpoint import CHECKSUMS, Checkpointer


def abstract_like(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _state():
  return {"params": {"dense": {"kernel": jnp.arange(12.0).reshape(3, 4)}}, "step": jnp.int32(7)}


def test_round_trip_and_keep_last(tmp_path):
  ckpt = Checkpointer(str(tmp_path), max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(), {"config": {"width": 4}, "step": step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  state, meta = ckpt.restore(None, abstract_like(_state()))
  np.testing.assert_array_equal(state["params"]["dense"]["kernel"], np.arange(12.0).reshape(3, 4))
  assert meta == {"config": {"width": 4}, "step": 3}


def test_restore_into_other_shapes_names_the_problem(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(), {})
  ckpt.wait()
  other = {"params": {"dense": {"kernel": jnp.zeros((5, 4))}}, "step": jnp.int32(0)}
  with pytest.raises(ValueError, match="does not match"):
    ckpt.restore(1, abstract_like(other))


def test_empty_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    Checkpointer(str(tmp_path)).restore_meta()


def test_restore_replicated_reads_the_structure_from_the_checkpoint(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(3, _state(), {"kind": "toy", "config": {}})
  ckpt.wait()
  state, meta = Checkpointer(str(tmp_path), read_only=True).restore_replicated(kind="toy")
  np.testing.assert_array_equal(state["params"]["dense"]["kernel"], _state()["params"]["dense"][
      "kernel"])
  assert int(state["step"]) == 7 and meta["kind"] == "toy"
  assert state["step"].sharding.is_fully_replicated
  with pytest.raises(ValueError, match="holds a toy checkpoint, not a gan"):
    Checkpointer(str(tmp_path), read_only=True).restore_replicated(kind="gan")


def test_read_only_open_of_a_missing_run_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints in"):
    Checkpointer(str(tmp_path / "nowhere"), read_only=True)
  assert not (tmp_path / "nowhere").exists()


def test_every_step_records_the_size_and_sha256_of_its_files(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(2, _state(), {"config": {}})
  folder = ckpt.step_path(2)
  with open(os.path.join(folder, CHECKSUMS)) as handle:
    recorded = json.load(handle)["files"]
  found = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, "rb") as data:
        found[os.path.relpath(path, folder)] = {"size": os.path.getsize(path),
                                                "sha256": hashlib.sha256(data.read()).hexdigest()}
  del found[CHECKSUMS]
  assert recorded == found and any(path.startswith("state" + os.sep) for path in found)


def test_saving_an_existing_step_is_refused_and_keeps_it(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(), {"config": {}})
  with pytest.raises(FileExistsError, match="checkpoint step 1 already exists"):
    ckpt.save(1, {"params": {}, "step": jnp.int32(0)}, {"config": {}})
  state, _ = Checkpointer(str(tmp_path), read_only=True).restore_replicated(1)
  assert int(state["step"]) == 7


def test_plain_orbax_reads_it_without_gmia(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(4, _state(), {"config": {"width": 4}})
  ckpt.wait()
  code = f"""
import json, sys
import orbax.checkpoint as ocp
mngr = ocp.CheckpointManager({ckpt.directory!r}, item_names=("state", "meta"))
restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
assert "gmia" not in sys.modules
print(json.dumps({{"kernel": restored.state["params"]["dense"]["kernel"].tolist(),
                  "meta": restored.meta}}))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=str(tmp_path))
  result = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_array_equal(result["kernel"], np.arange(12.0).reshape(3, 4))
  assert result["meta"] == {"config": {"width": 4}}
