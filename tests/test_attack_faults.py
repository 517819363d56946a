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
# Samples an attack draws, a chunk at a time: a chunk takes milliseconds, so one sample a chunk
# leaves tens of chunks, a tenth of a second or more, after each kill point to land in.
TOTAL, CHUNK = 96, 1


def command(models, workdir):
  gan, encoder = models
  return [sys.executable, "-m", "attack.membership", f"--workdir={workdir}",
          f"--config.generator=gmia:{gan}", f"--config.matcher.path={encoder}",
          f"--config.num_samples={TOTAL}", f"--config.chunk_size={CHUNK}", "--config.topk=3",
          "--config.bootstrap_resamples=20"]


def samples_done(workdir):
  with np.load(os.path.join(workdir, "state", "evidence.npz")) as saved:
    return int(saved["samples_done"])


def test_killed_attacks_resume_to_the_uninterrupted_files(models, tmp_path):
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  subprocess.run(command(models, whole), cwd=REPO, check=True, capture_output=True)
  rng = np.random.default_rng(0)
  # Progress lines come every TOTAL // 20 samples; each kill follows one in the first half.
  for kill_after in sorted(rng.choice(np.arange(4, TOTAL // 2, 4), 2, replace=False).tolist()):
    proc = subprocess.Popen(command(models, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
      lines.append(line)
      if f"step {kill_after}/{TOTAL} " in line:
        proc.send_signal(signal.SIGKILL)
        break
    proc.stderr.close()
    # The kill landed mid-run: the process died of it, with samples still to draw.
    assert proc.wait() == -signal.SIGKILL, "".join(lines)[-2000:]
    assert kill_after <= samples_done(killed) < TOTAL, samples_done(killed)
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
