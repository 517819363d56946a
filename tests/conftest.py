"""What every test module shares: a persistent JAX compilation cache, and tiny trained models on
one tiny synthetic split.

The cache is set in the environment before JAX starts, so the subprocesses of the multi-device
and multi-process tests share it too: a program compiled once (a resumed run's step, the same
tiny model in another test) is read back instead of compiled again.
"""

import os

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import math  # noqa: E402

import pytest  # noqa: E402

from gmia.face_encoder import trainer as encoder_trainer  # noqa: E402
from gmia.gan import trainer as gan_trainer  # noqa: E402
from train.configs import face_encoder_tiny, gan_tiny  # noqa: E402


MAX_WORKERS = 4  # Each worker builds its own session fixtures: more cost more than they save.


def usable_cpus() -> int:
  """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container
  limited to 2 CPUs of a larger host reports the host's count to os.cpu_count)."""
  count = len(os.sched_getaffinity(0))
  quotas = [("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "QUOTA PERIOD" or "max PERIOD".
            ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")]
  for quota_path, period_path in quotas:
    try:
      with open(quota_path) as handle:
        fields = handle.read().split()
      if period_path:
        with open(period_path) as handle:
          fields.append(handle.read().strip())
    except OSError:
      continue
    quota, period = fields[0], fields[1]
    if quota not in ("max", "-1") and int(period) > 0:
      count = min(count, max(1, math.ceil(int(quota) / int(period))))
  return count


@pytest.hookimpl(optionalhook=True)  # A hook of pytest-xdist, there when it is.
def pytest_xdist_auto_num_workers(config) -> int:
  """`-n auto` (pyproject's addopts): one worker per usable CPU, at most MAX_WORKERS."""
  return min(usable_cpus(), MAX_WORKERS)


def pytest_report_header(config) -> str:
  return f"usable CPUs: {usable_cpus()} (os.cpu_count: {os.cpu_count()})"


@pytest.fixture(scope="session")
def models(tmp_path_factory):
  """(generator workdir, encoder workdir): a few steps of training each, same split."""
  root = tmp_path_factory.mktemp("models")
  gan = gan_tiny.get_config()
  gan.data.data_dir = str(root / "data")
  gan.num_steps, gan.checkpoint_every, gan.log_every = 2, 2, 1
  gan_trainer.train_and_evaluate(gan, str(root / "gan"))
  encoder = face_encoder_tiny.get_config()
  encoder.data = gan.data
  encoder.data.split.path = str(root / "gan" / "split.json")
  encoder.eval_identities = 2
  encoder_trainer.train_and_evaluate(encoder, str(root / "encoder"))
  return str(root / "gan"), str(root / "encoder")


@pytest.fixture(scope="session")
def toy_main_job(tmp_path_factory):
  """(workdir, data folder, the first run's output) of the toy main job
  (attack/configs/main_job_tiny.py), run once as a user runs it."""
  import subprocess
  import sys
  root = tmp_path_factory.mktemp("main_job")
  output = subprocess.run(
      [sys.executable, "-m", "attack.main_job", f"--workdir={root / 'demo'}",
       "--config=attack/configs/main_job_tiny.py", f"--config.data.data_dir={root / 'data'}"],
      capture_output=True, text=True, timeout=900, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
  return root / "demo", root / "data", output
