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

import pytest  # noqa: E402

from gmia.face_encoder import trainer as encoder_trainer  # noqa: E402
from gmia.gan import trainer as gan_trainer  # noqa: E402
from train.configs import face_encoder_tiny, gan_tiny  # noqa: E402


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
