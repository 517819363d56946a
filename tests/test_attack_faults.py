"""The attack under kill -9: killed at random points (seeded) and rerun, its report files are
bitwise those of the uninterrupted run; a second attack on a busy workdir exits at once."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.multiprocess import REPO

FILES = ("scores.csv", "samples.csv")


def command(models, workdir):
  gan, encoder = models
  return [sys.executable, "-m", "attack.membership", f"--workdir={workdir}",
          f"--config.generator=gmia:{gan}", f"--config.matcher.path={encoder}",
          "--config.num_samples=96", "--config.chunk_size=8", "--config.topk=3",
          "--config.bootstrap_resamples=20"]


def samples_done(workdir):
  try:
    with np.load(os.path.join(workdir, "state", "evidence.npz")) as saved:
      return int(saved["samples_done"])
  except (OSError, KeyError, ValueError):  # Not there yet, or being replaced.
    return 0


def test_killed_attacks_resume_to_the_uninterrupted_files(models, tmp_path):
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  subprocess.run(command(models, whole), cwd=REPO, check=True, capture_output=True)
  rng = np.random.default_rng(0)
  for kill_after in sorted(rng.choice(np.arange(8, 88, 8), 2, replace=False).tolist()):
    proc = subprocess.Popen(command(models, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while samples_done(killed) < kill_after and proc.poll() is None:
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The next start sees the busy-lock file of a dead process: it takes the lock at once.
  resumed = subprocess.run(command(models, killed), cwd=REPO, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming at sample" in resumed.stderr
  for name in FILES:
    assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_a_second_attack_on_a_busy_workdir_exits_at_once(models, tmp_path):
  workdir = str(tmp_path / "busy")
  first = subprocess.Popen(command(models, workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    while not os.path.exists(os.path.join(workdir, ".gmia-lock")) and first.poll() is None:
      time.sleep(0.05)
    second = subprocess.run(command(models, workdir), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 1
    assert f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
  finally:
    first.kill()
    first.wait()
