"""Multi-host for real: jobs of 2 processes x 2 CPU devices on 127.0.0.1 (tests/multiprocess.py),
started as a user starts them, against the same work on 1 process x 4 devices.

One 2 x 2 job trains the tiny GAN (8 steps) and the tiny face encoder in float64 (class centres
split over the 4 devices of both processes); one 1 x 4 process trains both the same way, reads
the 2 x 2 GAN checkpoint with README's Orbax snippet, resumes it to 12 steps on its own topology,
and trains its own to 12 steps.
"""

import concurrent.futures
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gmia.jobs import membership
from tests.multidevice import run_with_devices
from tests.multiprocess import REPO, free_port, job_environment, run_code, run_job

TRAIN = """
from gmia.face_encoder import trainer as encoder_trainer
from gmia.gan import trainer as gan_trainer
from tests.resume_check import final_checkpoint
from train.configs import face_encoder_tiny, gan_tiny

def configs(data_dir, steps):
  gan = gan_tiny.get_config()
  gan.update(num_steps=steps, checkpoint_every=4, log_every=4)
  gan.data.data_dir = data_dir
  encoder = face_encoder_tiny.get_config()
  encoder.data.data_dir = data_dir
  encoder.model.dtype = "float64"
  return gan, encoder

def flat(prefix, tree):
  return {{f"{{prefix}}{{k}}": v for k, v in tree.items()}}
"""

# The GAN computes in float32 only; the face encoder, trained after it, in float64.
TWO_PROCESSES = TRAIN + """
gan, encoder = configs({data!r}, 8)
gan_trainer.train_and_evaluate(gan, {root!r} + "/gan_2x2")
jax.config.update("jax_enable_x64", True)
encoder_trainer.train_and_evaluate(encoder, {root!r} + "/encoder_2x2")
RESULT = {{"process": jax.process_index(), "devices": jax.device_count()}}
"""

ONE_PROCESS = TRAIN + """
import jax
import numpy as np
import orbax.checkpoint as ocp
gan, encoder = configs({data!r}, 8)
gan_trainer.train_and_evaluate(gan, {root!r} + "/gan_1x4")
task = gan_trainer.make_task(gan, {root!r} + "/fresh")
fresh = jax.tree_util.tree_flatten_with_path(jax.device_get(task.init(task.consts)))[0]
RESULT = {{**flat("gan_8/", final_checkpoint({root!r} + "/gan_2x2")),
           **flat("ref_8/", final_checkpoint({root!r} + "/gan_1x4")),
           **{{"init/" + jax.tree_util.keystr(path): leaf for path, leaf in fresh}}}}
# README's snippet reads the checkpoint two processes wrote together.
exec({snippet!r}.replace("runs/demo/gan/checkpoints", {root!r} + "/gan_2x2/checkpoints"))
RESULT.update({{"readme/['g_ema']" + jax.tree_util.keystr(path): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(g_ema)[0]}})
RESULT["readme_num_steps"] = config["num_steps"]
# Plain orbax restores it onto this topology's devices, given their shardings.
checkpointer = ocp.StandardCheckpointer()
path = {root!r} + "/gan_2x2/checkpoints/8/state"
everywhere = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("d",)),
                                        jax.sharding.PartitionSpec())
target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=everywhere),
                      checkpointer.metadata(path).item_metadata.tree)
plain = checkpointer.restore(path, target)
RESULT["plain_g_ema_const"] = plain["g_ema"]["synthesis"]["b4"]["const"]
longer, _ = configs({data!r}, 12)
resumed = gan_trainer.train_and_evaluate(longer, {root!r} + "/gan_2x2")
RESULT["resumed_from"], RESULT["steps_run"] = resumed.resumed_from, resumed.steps_run
gan_trainer.train_and_evaluate(longer, {root!r} + "/gan_1x4")
RESULT.update(flat("gan_12/", final_checkpoint({root!r} + "/gan_2x2")))
RESULT.update(flat("ref_12/", final_checkpoint({root!r} + "/gan_1x4")))
jax.config.update("jax_enable_x64", True)
encoder_trainer.train_and_evaluate(encoder, {root!r} + "/encoder_1x4")
RESULT.update(flat("enc/", final_checkpoint({root!r} + "/encoder_2x2")))
RESULT.update(flat("ref_enc/", final_checkpoint({root!r} + "/encoder_1x4")))
"""


def readme_restore_snippet() -> str:
  """The Python block of README.md's section "Checkpoints without gmia"."""
  with open(os.path.join(REPO, "README.md")) as handle:
    readme = handle.read()
  section = readme[readme.index("## Checkpoints without gmia"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("multihost"))
  data = os.path.join(root, "data")
  processes = run_code(2, 2, TWO_PROCESSES.format(root=root, data=data), timeout=900)
  one = ONE_PROCESS.format(root=root, data=data, snippet=readme_restore_snippet())
  return processes, run_with_devices(4, one, timeout=900)


def leaves(result, prefix):
  """{name: f64 array} of the leaves under `prefix`; optax's named tuples, which Orbax saves as
  dicts, named as dicts (`.mu` -> `['mu']`)."""
  return {re.sub(r"\.(\w+)", r"['\1']", k[len(prefix):]): np.asarray(v, np.float64)
          for k, v in result.items() if k.startswith(prefix)}


def close_to_training(result, prefix, reference, fraction=1e-2):
  """Every leaf under `prefix` is its `reference` twin to within `fraction` of how far training
  moved it from the fresh state (both runs start there). Two topologies sum in another order,
  which float32 Adam grows to at most 7.5e-4 of the movement in 8 steps (measured, every leaf:
  weights, biases, moments); a batch read, sharded or reduced wrongly moves the weights
  elsewhere, by the order of the movement itself. A leaf that did not move must be equal."""
  actual, desired, start = (leaves(result, p) for p in (prefix, reference, "init/"))
  assert actual and actual.keys() == desired.keys() == start.keys()
  for name in desired:
    assert actual[name].shape == desired[name].shape, name
    error = np.linalg.norm(actual[name] - desired[name])
    moved = np.linalg.norm(desired[name] - start[name])
    assert error <= fraction * moved, (name, error, moved)


def test_two_processes_train_the_gan_like_one_and_another_topology_resumes_it(trained):
  processes, result = trained
  assert [int(p["process"]) for p in processes] == [0, 1]
  assert all(int(p["devices"]) == 4 for p in processes)
  close_to_training(result, "gan_8/", "ref_8/")
  np.testing.assert_array_equal(result["plain_g_ema_const"],
                                result["gan_8/['g_ema']['synthesis']['b4']['const']"])
  # Restored into 1 x 4's shardings, only the 4 remaining steps ran, to the same state.
  assert int(result["resumed_from"]) == 8 and int(result["steps_run"]) == 4
  close_to_training(result, "gan_12/", "ref_12/")


def test_readme_snippet_restores_a_checkpoint_two_processes_wrote(trained):
  _, result = trained
  want = {k: v for k, v in leaves(result, "gan_8/").items() if k.startswith("['g_ema']")}
  got = leaves(result, "readme/")
  assert len(want) > 20 and got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert int(result["readme_num_steps"]) == 8


def test_two_processes_train_the_class_sharded_encoder_like_one(trained):
  """Compared in float64, where sums taken in another order agree to ~1e-13: the rounding
  that 4 float32 steps grow to 1e-4 on some parameters (CPU-dependent) is gone, so a padded
  class centre reaching the softmax or a gradient summed over one process stands out."""
  _, result = trained
  got, want = leaves(result, "enc/"), leaves(result, "ref_enc/")
  assert len(want) > 10 and got.keys() == want.keys()
  assert {v.dtype for k, v in result.items()
          if k.startswith("ref_enc/") and v.dtype.kind == "f"} == {np.dtype(np.float64)}
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-11, err_msg=name)


def test_each_process_reads_its_own_slice_of_every_global_batch():
  code = """
import numpy as np
from gmia.data.pipeline import Batches
images = np.arange(10 * 4 * 4 * 3, dtype=np.uint8).reshape(10, 4, 4, 3)
batches = Batches(images, global_batch_size=8, seed=3, labels=np.arange(10))
RESULT = {f"labels_{s}": batches.at(s)["labels"] for s in range(3)}
RESULT["global"] = np.stack([batches.global_indices(s) for s in range(3)])
"""
  first, second = run_code(2, 1, code, timeout=300)
  alone = run_with_devices(1, code)
  for step in range(3):
    mine, theirs = first[f"labels_{step}"], second[f"labels_{step}"]
    assert len(mine) == len(theirs) == 4
    # Disjoint positions of the batch, covering it, in the single process's order.
    np.testing.assert_array_equal(np.concatenate([mine, theirs]), alone[f"labels_{step}"])
    np.testing.assert_array_equal(alone[f"labels_{step}"], alone["global"][step])
  np.testing.assert_array_equal(first["global"], alone["global"])


def attack_command(models, workdir, num_samples):
  gan, encoder = models
  return [sys.executable, "-m", "attack.membership", f"--workdir={workdir}",
          f"--config.generator=gmia:{gan}", f"--config.matcher.path={encoder}",
          f"--config.num_samples={num_samples}", "--config.chunk_size=8", "--config.topk=3",
          "--config.bootstrap_resamples=50"]


def test_the_attack_on_two_processes_reports_what_one_does(models, tmp_path):
  job = str(tmp_path / "job")
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    two = pool.submit(run_job, [attack_command(models, job, 48)] * 2, 2, 600)
    config = membership.default_config()
    config.generator = f"gmia:{models[0]}"
    config.matcher.path = models[1]
    config.update(num_samples=48, chunk_size=8, topk=3, bootstrap_resamples=50)
    alone = membership.run(config, str(tmp_path / "alone"))
    two.result()
  # The same people, groups, best samples and photos; scores equal to float precision (4
  # devices sum in another order than 1; the density score, a log of kernel sums with a sharp
  # kernel, carries cosine rounding relative to its size), and the same metrics.
  job_rows, alone_rows = (list(csv.DictReader(open(tmp_path / name / "scores.csv")))
                          for name in ("job", "alone"))
  assert len(job_rows) == len(alone_rows) == 10
  for mine, theirs in zip(job_rows, alone_rows):
    for column, value in mine.items():
      if column.startswith("score_") or column.startswith("p_value"):
        tolerance = 1e-4 if column == "score_density" else 1e-5
        assert math.isclose(float(value), float(theirs[column]), rel_tol=tolerance,
                            abs_tol=tolerance), column
      else:
        assert value == theirs[column], column
  assert json.loads((tmp_path / "job" / "report.json").read_text())["metrics"] == alone["metrics"]


def test_a_dead_process_stops_the_other_and_a_rerun_resumes(models, tmp_path):
  workdir = str(tmp_path / "job")
  command = attack_command(models, workdir, 4000)
  port = free_port()
  procs = [subprocess.Popen(command, cwd=REPO, env=job_environment(i, 2, 1, port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for i in range(2)]
  state = os.path.join(workdir, "state", "evidence.npz")
  try:
    deadline = time.monotonic() + 300
    while not os.path.exists(state) and time.monotonic() < deadline:
      time.sleep(0.2)
    assert os.path.exists(state), "the job never saved its first chunk"
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    procs[0].wait(timeout=120)  # An error, within seconds of the missed heartbeats, not a hang.
    assert procs[0].returncode != 0 and time.monotonic() - killed < 120
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  with np.load(state) as saved:
    done = int(saved["samples_done"])
  assert 0 < done < 4000
  out = run_job([attack_command(models, workdir, done + 16)] * 2, 1, 600)
  assert f"resuming at sample {done}" in out[0]
