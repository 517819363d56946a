"""Faults a long run meets, and what gmia does about them: NaN and inf, two processes on one
workdir, damaged checkpoints, a full disk, files left half-written, kill -9 at random points."""

import concurrent.futures
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia import files, training, workdir
from gmia.checkpoint import CHECKSUMS, Checkpointer, CorruptCheckpointError
from gmia.finite import NonFiniteError, check_finite, nonfinite_leaves
from gmia.gan import trainer
from tests.resume_check import final_checkpoint
from train.configs import gan_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- a toy task: w += mean(batch)

def initial_w(size):
  """Random (so incompressible: checkpoints take their size on disk) initial values."""
  return jax.random.uniform(jax.random.key(0), (size,))


def vector_task(size=4, steps=6, poison_at=None, poison="state"):
  """`size` values, each adding the batch's mean (the step number) at every step; the step
  that brings the count to `poison_at` makes the state inf or the metric NaN."""

  def step(state, batch, _):
    count = state["step"] + 1
    w = state["w"] + jnp.mean(batch["values"])
    if poison == "state":
      w = jnp.where(count == poison_at, w * jnp.inf, w)
    loss = jnp.sum(w) if poison == "state" else jnp.where(count == poison_at, jnp.nan, jnp.sum(w))
    return {"w": w, "step": count}, {"loss": loss}

  return training.Task(
      kind="toy", init=lambda _: {"w": initial_w(size), "step": jnp.zeros((), jnp.int32)},
      phases=[training.Phase("add", steps, step,
                             lambda s: {"values": np.full((2,), s, np.float32)})])


def vector_config(**fields):
  config = training.default_config(evaluated=False)
  config.update(log_every=100, checkpoint_every=2, keep_checkpoints=10)
  config.update(fields)
  return config


def expected_w(size, steps):
  """w after `steps` steps: the batch of step s holds s."""
  return np.asarray(initial_w(size)) + np.float32(sum(range(steps)))


def saved_arrays(path):
  """{step: state} of every checkpoint in `path`."""
  checkpointer = Checkpointer(path, read_only=True)
  try:
    return {step: checkpointer.restore_replicated(step)[0] for step in checkpointer.all_steps()}
  finally:
    checkpointer.close()


def saved_steps(path):
  checkpointer = Checkpointer(path, read_only=True)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def temporaries(root):
  return [os.path.join(folder, name) for folder, subfolders, names in os.walk(root)
          for name in names + subfolders if any(m in name for m in workdir.TEMPORARY_MARKS)]


# ---------------------------------------------------------------- NaN and inf

@pytest.mark.parametrize("poison,named", [("state", r"state \(non-finite leaves now: 1, first "
                                                    r"\['w'\]\)"),
                                          ("metric", r"loss=nan")])
def test_first_non_finite_step_stops_the_run_before_it_is_saved(tmp_path, caplog, poison,
                                                                named):
  """Step 5 goes non-finite between checkpoints (every 2 steps): the run stops at step 6, before
  saving, naming step 5; what was saved is finite; step 5's metrics are logged."""
  with caplog.at_level(logging.INFO):
    with pytest.raises(NonFiniteError, match=f"step 5 produced non-finite .*{named}.*newest "
                                             "checkpoint is step 4"):
      training.run(vector_task(poison_at=5, poison=poison), vector_config(), str(tmp_path))
  saved = saved_arrays(str(tmp_path))
  assert sorted(saved) == [2, 4]
  for step, state in saved.items():
    check_finite(state, f"step {step}")
    np.testing.assert_allclose(state["w"], expected_w(4, step), rtol=1e-6)
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 5/")]
  assert logged and ("loss=nan" in logged[0] if poison == "metric" else "loss=inf" in logged[0])


def test_check_finite_names_the_leaf():
  tree = {"a": jnp.ones(3), "b": {"c": jnp.array([1.0, np.nan, np.inf])}, "n": jnp.arange(3)}
  assert nonfinite_leaves(tree) == {"['b']['c']": 2}
  with pytest.raises(NonFiniteError, match=r"generator holds non-finite .*: 2 in \['b'\]\['c'\]"):
    check_finite(tree, "generator")
  check_finite({"a": jnp.ones(2), "n": jnp.arange(2)}, "generator")


def test_gan_with_a_huge_learning_rate_stops_and_saves_nothing_non_finite(tmp_path):
  config = gan_tiny.get_config()
  config.data.data_dir = str(tmp_path / "data")
  config.update(num_steps=4, checkpoint_every=2, log_every=4)
  config.optimizer.update(g_lr=1e6, d_lr=1e6)
  with pytest.raises(NonFiniteError, match=r"gan training diverged: step (\d+) produced "
                                           r"non-finite .*loss_d=nan") as raised:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  first = int(re.search(r"step (\d+)", str(raised.value)).group(1))
  steps = saved_steps(str(tmp_path / "run"))
  assert all(step < first for step in steps), steps
  for step, state in saved_arrays(str(tmp_path / "run")).items():
    check_finite(state, f"step {step}")


# ---------------------------------------------------------------- one process per workdir

HOLD = """
import sys, time
from gmia.workdir import locked
with locked(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def test_a_held_workdir_refuses_others_at_once_until_its_holder_dies(tmp_path):
  held = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", HOLD, held], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    began = time.perf_counter()
    with pytest.raises(workdir.WorkdirBusyError, match=f"in use by .* \\(PID {holder.pid}\\)"):
      with workdir.locked(held):
        pass
    assert time.perf_counter() - began < 1
    cli = subprocess.run([sys.executable, "-m", "train.train_gan",
                          "--config=train/configs/gan_tiny.py", f"--workdir={held}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1
    assert f"(PID {holder.pid})" in cli.stderr.strip().splitlines()[-1]
    assert os.listdir(held) == [workdir.LOCK_FILE]  # The refused run wrote nothing.
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir.locked(held):  # The OS released the killed holder's lock.
    with workdir.locked(held):  # Re-entrant within a process.
      with open(os.path.join(held, workdir.LOCK_FILE)) as handle:
        assert handle.read().strip() == str(os.getpid())


def test_the_next_start_removes_what_a_killed_run_left_half_written(tmp_path, caplog):
  run = tmp_path / "run"
  training.run(vector_task(), vector_config(), str(run))
  left = [run / "checkpoints" / "8.orbax-checkpoint-tmp-1700000000",
          run / f".eval.json{files.TEMPORARY_MARK}0a1b2c3d"]
  left[0].mkdir()
  (left[0] / "state").write_bytes(b"partial")
  left[1].write_text("{")
  inner = run / "inner"  # Another workdir inside this one: its own holder cleans it.
  inner.mkdir()
  (inner / workdir.LOCK_FILE).write_text("")
  (inner / f".x{files.TEMPORARY_MARK}0a1b2c3d").write_text("")
  with caplog.at_level(logging.WARNING):
    result = training.run(vector_task(steps=8), vector_config(), str(run))
  assert result.resumed_from == 6 and temporaries(str(run)) == temporaries(str(inner))
  assert len(temporaries(str(inner))) == 1
  assert "left half-written" in caplog.text and "eval.json" in caplog.text


def test_atomic_writes_follow_the_umask(tmp_path):
  previous = os.umask(0o027)
  try:
    files.write_json(str(tmp_path / "a.json"), {"x": 1})
  finally:
    os.umask(previous)
  assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o640
  assert files.read_json(str(tmp_path / "a.json")) == {"x": 1}


# ---------------------------------------------------------------- damaged checkpoints

def _largest(folder):
  paths = [os.path.join(p, n) for p, _, names in os.walk(folder) for n in names if n != CHECKSUMS]
  return max(paths, key=os.path.getsize)


def truncate(path):
  with open(path, "r+b") as handle:
    handle.truncate(os.path.getsize(path) // 2)


def flip(path):
  with open(path, "r+b") as handle:
    middle = os.path.getsize(path) // 2 - 32
    handle.seek(middle)
    data = bytes(b ^ 0xFF for b in handle.read(64))
    handle.seek(middle)
    handle.write(data)


DAMAGES = {"truncated": (truncate, r"has \d+ bytes, \d+ when saved"),
           "deleted": (os.remove, "is missing"),
           "flipped": (flip, "differs from its checksum")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished toy run (checkpoints 2, 4, 6) with 64 Ki values per step."""
  path = str(tmp_path_factory.mktemp("trained") / "run")
  training.run(vector_task(size=1 << 16), vector_config(), path)
  return path


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_step_is_an_error_for_loaders_and_a_fallback_for_training(
    trained, tmp_path, caplog, damage):
  run = str(tmp_path / "run")
  shutil.copytree(trained, run)
  damaged = _largest(os.path.join(run, "checkpoints", "6"))
  relative = os.path.relpath(damaged, os.path.join(run, "checkpoints", "6"))
  apply, problem = DAMAGES[damage]
  apply(damaged)
  with pytest.raises(CorruptCheckpointError) as raised:
    Checkpointer(run, read_only=True).restore_replicated()
  message = str(raised.value)
  assert "\n" not in message and message.startswith("checkpoint step 6 in ")
  assert relative in message and re.search(problem, message)
  with caplog.at_level(logging.WARNING):
    result = training.run(vector_task(size=1 << 16), vector_config(), run)
  assert result.resumed_from == 4 and result.steps_run == 2
  assert "checkpoint step 6" in caplog.text and "resuming from an earlier step" in caplog.text
  assert os.path.isdir(os.path.join(run, "rejected_checkpoints", "6"))
  want, got = final_checkpoint(trained), final_checkpoint(run)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_step_without_checksums_is_incomplete(trained, tmp_path):
  run = str(tmp_path / "run")
  shutil.copytree(trained, run)
  os.remove(os.path.join(run, "checkpoints", "6", CHECKSUMS))
  with pytest.raises(CorruptCheckpointError, match=f"step 6 in .* is incomplete: .*{CHECKSUMS}"):
    Checkpointer(run, read_only=True).restore_replicated()
  assert Checkpointer(run).resume_step() == 4


def test_read_only_loads_create_nothing(trained):
  def snapshot():
    return {os.path.join(p, n): os.stat(os.path.join(p, n)).st_mtime_ns
            for p, subfolders, names in os.walk(trained) for n in names + subfolders}

  before = snapshot()
  checkpointer = Checkpointer(trained, read_only=True)
  state, _ = checkpointer.restore_replicated(kind="toy")
  checkpointer.close()
  np.testing.assert_allclose(state["w"], expected_w(1 << 16, 6), rtol=1e-6)
  assert snapshot() == before


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB tmpfs when the tests run as root (and may mount), else None."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                    capture_output=True).returncode:
    yield None
    return
  try:
    yield disk
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_fails_the_save_at_once_cleanly_and_the_next_run_resumes(
    small_disk, tmp_path, monkeypatch, caplog):
  """Checkpoints of 224 Ki random values (0.8 MiB compressed) every step, 2 kept, beside a
  0.9 MiB file on a 3 MiB disk: step 3's save (3 steps on disk until the oldest goes) fills it.
  With no disk to fill, the checksums' writer raises ENOSPC at step 3 instead."""
  size = 224 * 1024
  root = small_disk or tmp_path
  filler = root / "filler"
  filler.write_bytes(b"\0" * (900 << 10))
  run = str(root / "run")
  config = vector_config(checkpoint_every=1, keep_checkpoints=2)
  if small_disk is None:
    write_json = files.write_json

    def full_disk(path, payload):
      if path.endswith(os.path.join("3", CHECKSUMS)) and filler.exists():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      write_json(path, payload)

    monkeypatch.setattr(files, "write_json", full_disk)
  with caplog.at_level(logging.INFO):
    with pytest.raises(OSError, match="could not save checkpoint step 3 in .*No space left"):
      training.run(vector_task(size=size, steps=5), config, run)
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert not temporaries(run)
  assert saved_steps(run) == [1, 2]
  os.remove(filler)
  result = training.run(vector_task(size=size, steps=5), config, run)
  assert result.resumed_from == 2 and result.steps_run == 3
  np.testing.assert_allclose(final_checkpoint(run)["['w']"], expected_w(size, 5), rtol=1e-6)


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(small_disk, tmp_path,
                                                                    monkeypatch):
  root = small_disk or tmp_path
  path = str(root / "report.json")
  files.write_json(path, {"old": True})
  if small_disk is None:
    def full_disk(*_):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    files.write_atomic(path, b"\0" * (4 << 20))
  assert files.read_json(path) == {"old": True} and not temporaries(str(root))


# ---------------------------------------------------------------- kill -9 at random points

KILL_STEPS, KILL_EVERY = 16, 3


def _gan_cli(data_dir, workdir_path):
  return [sys.executable, "-m", "train.train_gan", "--config=train/configs/gan_tiny.py",
          f"--config.num_steps={KILL_STEPS}", f"--config.checkpoint_every={KILL_EVERY}",
          "--config.log_every=1", f"--config.data.data_dir={data_dir}", f"--workdir={workdir_path}"]


def _newest_intact(path):
  """The step a run resumed in `path` must continue from (0: none)."""
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    return 0
  checkpointer = Checkpointer(path, read_only=True)
  try:
    for step in reversed(checkpointer.all_steps()):
      try:
        checkpointer.verify(step)
        return step
      except CorruptCheckpointError:
        continue
    return 0
  finally:
    checkpointer.close()


def test_kill_9_at_random_points_then_resume_equals_the_uninterrupted_run(tmp_path):
  """Three kills, each a random delay (seeded) after a random step's progress line: the first in
  a checkpoint's save (it follows the line), the others anywhere in steps, saves and sample
  grids. Every restart says where it resumed, from the newest intact checkpoint, and the
  finished run equals the uninterrupted one bit for bit (which trains meanwhile in this
  process, on its own copy of the data)."""
  data_dir, run = tmp_path / "data", str(tmp_path / "run")
  config = gan_tiny.get_config()
  config.update(num_steps=KILL_STEPS, checkpoint_every=KILL_EVERY, log_every=1)
  config.data.data_dir = str(tmp_path / "uninterrupted_data")
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    uninterrupted = pool.submit(trainer.train_and_evaluate, config, str(tmp_path / "ref"))
    _kill_and_resume(data_dir, run)
    uninterrupted.result()
  want, got = final_checkpoint(str(tmp_path / "ref")), final_checkpoint(run)
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _kill_and_resume(data_dir, run):
  """Runs the tiny GAN's CLI in `run` until it finishes, killing it three times."""
  rng = np.random.default_rng(0)
  # (step whose progress line sets off a kill, delay): the last leaves time for it to land.
  kills = [(int(rng.choice([KILL_EVERY, 2 * KILL_EVERY])), rng.uniform(0, 0.25)),
           (int(rng.integers(7, 10)), rng.uniform(0, 0.5)),
           (int(rng.integers(10, KILL_STEPS - 2)), rng.uniform(0, 0.5))]
  for kill_at, delay in kills + [(None, 0)]:
    resumed_at = _newest_intact(run)
    process = subprocess.Popen(_gan_cli(data_dir, run), cwd=REPO, stderr=subprocess.PIPE,
                               text=True)
    lines = []
    for line in process.stderr:
      lines.append(line)
      if kill_at is not None and f"step {kill_at}/{KILL_STEPS} " in line:
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        break
    process.stderr.close()
    code = process.wait()
    log = "".join(lines)
    assert code == (-signal.SIGKILL if kill_at is not None else 0), log[-3000:]
    if resumed_at:
      assert f"resumed {run} at step {resumed_at} of {KILL_STEPS}" in log, log[-3000:]
