"""DDPM training: the `tiny` trainer end to end (outputs, resume bit for bit, a plain-orbax restore,
sampling the result), 2 processes x 4 devices against 1 device, the configs, and clear errors."""

import concurrent.futures
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmia.checkpoint import Checkpointer
from gmia.data.split import IdentitySplit
from gmia.diffusion import sampling, trainer
from gmia.models import unet as unet_lib
from gmia.runs import load_run
from tests.multidevice import run_with_devices
from tests.multiprocess import run_code
from tests.resume_check import check_resume
from train.configs import diffusion_tiny

STEPS = 8


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _config(data_dir, **fields):
  config = diffusion_tiny.get_config()
  config.num_steps, config.checkpoint_every, config.log_every = STEPS, STEPS // 2, STEPS // 2
  config.data.data_dir = str(data_dir)
  config.update(fields)
  return config


FLOAT64_RUN = """
jax.config.update("jax_enable_x64", True)
from gmia.diffusion import trainer
from tests.resume_check import final_checkpoint
from train.configs import diffusion_tiny
config = diffusion_tiny.get_config()
config.num_steps, config.checkpoint_every = {steps}, {steps}
config.data.data_dir = {data_dir!r}
config.model.dtype = "float64"
trainer.train_and_evaluate(config, {workdir!r})
RESULT = {{"devices": jax.device_count(), "processes": jax.process_count()}}
"""

# Both float64 checkpoints restored in one single-device float64 process (the job's changes
# topology).
RESTORE = """
import jax
from tests.resume_check import final_checkpoint
RESULT = {{}}
for name in ("job", "alone"):
  state = final_checkpoint({root!r} + "/" + name)
  RESULT.update({{f"{{name}}/{{k}}": v for k, v in state.items()}})
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def float64_runs(data_dir, tmp_path_factory):
  """The tiny run in float64 as 2 processes x 4 devices and as 1 process x 1 device, started
  first and in the background while this process trains the float32 run."""
  root = tmp_path_factory.mktemp("float64")
  # The data set is prepared once, here, before the processes read it.
  trainer.run_data.load_dataset(_config(data_dir).data)
  code = {name: FLOAT64_RUN.format(steps=STEPS, data_dir=str(data_dir),
                                   workdir=str(root / name)) for name in ("job", "alone")}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    yield root, (pool.submit(run_code, 2, 4, "import sys\n" + code["job"], 900),
                 pool.submit(run_with_devices, 1, "import jax\n" + code["alone"], 900,
                             {"JAX_ENABLE_X64": "1"}))


@pytest.fixture(scope="module")
def tiny_run(float64_runs, data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny"))
  result = trainer.train_and_evaluate(_config(data_dir), workdir)
  return workdir, result.state, result.train_metrics


def test_tiny_run_trains_and_writes_its_outputs(tiny_run):
  workdir, state, metrics = tiny_run
  assert int(state["step"]) == STEPS
  assert np.isfinite(metrics["loss"]) and 0.1 < metrics["loss"] < 3
  # The EMA decay of the last step (step 7): min(0.9, 8 / 17).
  np.testing.assert_allclose(metrics["ema_decay"], 8 / 17, rtol=1e-6)
  ckpt = Checkpointer(workdir)
  assert ckpt.all_steps() == [STEPS // 2, STEPS]
  half, meta = ckpt.restore_replicated(STEPS // 2, kind="diffusion")
  for group in ("params", "ema"):
    before, after = _flat(half[group]), _flat(state[group])
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged, f"{group} did not move: {unchanged}"
  assert meta["config"]["model"]["block_out_channels"] == [4, 8]
  assert meta["split"] == IdentitySplit.load(os.path.join(workdir, "split.json")).to_json()
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
      f"step_{STEPS // 2:07d}.png", f"step_{STEPS:07d}.png"]


def test_resume_runs_only_the_remaining_steps(tiny_run, data_dir, tmp_path):
  workdir, _, _ = tiny_run
  check_resume(trainer.train_and_evaluate, _config(data_dir), workdir, str(tmp_path / "resumed"))


def test_two_processes_of_four_devices_train_like_one_device(float64_runs):
  """The batch, its timesteps and noise split over 8 devices of 2 processes: the same steps as
  on one device. Compared in float64, where sums taken in another order agree to ~1e-13 (in
  float32 Adam's first steps grow that rounding to ~1e-4 on gradients near zero), so anything
  real (a shard's noise drawn twice, a gradient summed over one process) stands out."""
  root, runs = float64_runs
  job, alone = (run.result() for run in runs)
  assert [int(p["processes"]) for p in job] == [2, 2] and int(alone["processes"]) == 1
  assert all(int(p["devices"]) == 8 for p in job) and int(alone["devices"]) == 1
  restored = run_with_devices(1, RESTORE.format(root=str(root)), env={"JAX_ENABLE_X64": "1"})
  result, alone = ({k.split("/", 1)[1]: v for k, v in restored.items() if k.startswith(prefix)}
                   for prefix in ("job/", "alone/"))
  assert result.keys() == alone.keys() and len(result) > 20
  for name in alone:
    assert result[name].dtype == alone[name].dtype, name
    np.testing.assert_allclose(result[name], alone[name], rtol=1e-9, atol=1e-11, err_msg=name)
  assert alone["['params']['conv_out']['kernel']"].dtype == np.float64


def test_plain_orbax_restores_the_checkpoint_without_gmia(tiny_run, tmp_path):
  workdir, state, _ = tiny_run
  out = tmp_path / "ema.npz"
  code = f"""
import sys
import jax, numpy as np
import orbax.checkpoint as ocp
mngr = ocp.CheckpointManager({os.path.join(workdir, "checkpoints")!r},
                             item_names=("state", "meta"))
restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
ema, config = restored.state["ema"], restored.meta["config"]
assert isinstance(ema["down_blocks_1"]["attentions_0"]["to_q"], dict)
assert config["model"]["down_block_types"][1] == "AttnDownBlock2D"
assert config["schedule"]["beta_schedule"] == "linear" and int(restored.state["step"]) == {STEPS}
assert "gmia" not in sys.modules
flat = {{jax.tree_util.keystr(p): np.asarray(v)
         for p, v in jax.tree_util.tree_flatten_with_path(ema)[0]}}
np.savez({str(out)!r}, **flat)
"""
  subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), capture_output=True)
  with np.load(out) as restored:
    want = _flat(state["ema"])
    assert sorted(restored.files) == sorted(want)
    for name in want:
      np.testing.assert_array_equal(restored[name], want[name])


def test_a_trained_workdir_samples(tiny_run):
  workdir, state, _ = tiny_run
  run = load_run(workdir, "diffusion")
  unet, variables, chain = run.model, run.variables, run.schedule
  assert run.input_size == 32 and chain.num_train_timesteps == 1000
  for name, leaf in _flat(variables["params"]).items():
    np.testing.assert_array_equal(leaf, _flat(state["ema"])[name])
  sample = sampling.make_sampler(unet, variables, chain, sampler="ddim", num_steps=3,
                                 resolution=32)
  images = np.asarray(sample(np.arange(3), 0))
  assert images.shape == (3, 32, 32, 3) and np.all(np.isfinite(images))
  raw = load_run(workdir, "diffusion", ema=False).variables
  assert not np.array_equal(raw["params"]["conv_out"]["kernel"],
                            variables["params"]["conv_out"]["kernel"])


def test_clear_errors(tiny_run, data_dir, tmp_path):
  workdir, _, _ = tiny_run
  deep = _config(data_dir)  # Six downsamplings of 32 px.
  deep.model.update(block_out_channels=(4,) * 7, down_block_types=("DownBlock2D",) * 7,
                    up_block_types=("UpBlock2D",) * 7)
  with pytest.raises(ValueError, match="data.resolution 32 must be divisible by 64"):
    trainer.train_and_evaluate(deep, str(tmp_path / "deep"))
  other = _config(data_dir)
  other.model.layers_per_block = 2
  with pytest.raises(ValueError, match="another config: model.layers_per_block"):
    trainer.train_and_evaluate(other, workdir)
  with pytest.raises(ValueError, match="train_group must be 'members'"):
    trainer.train_and_evaluate(_config(data_dir, train_group="everyone"), str(tmp_path / "x"))
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    load_run(str(tmp_path / "x"), "diffusion")


@pytest.mark.parametrize("name", ["diffusion_cpu_demo", "diffusion_64", "diffusion_dp_cpu_demo"])
def test_configs_build(name):
  """Every config's U-Net and state build (abstractly: no compile)."""
  config = __import__(f"train.configs.{name}", fromlist=["get_config"]).get_config()
  unet = unet_lib.from_config(config)
  state = jax.eval_shape(lambda: trainer.init_state(config, unet))
  assert state["params"]["conv_out"]["kernel"].shape[-1] == 3
  assert config.batch_size > 0 and 0 < config.ema_decay < 1
