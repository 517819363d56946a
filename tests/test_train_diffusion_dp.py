"""Person-level DP-SGD for the DDPM: the private step against the ordinary one (no clipping, no
noise: equal in float64), empty slots, and the `diffusion_dp_tiny` trainer end to end (privacy
metadata, nothing read from the photos in its metrics, resume bit for bit, 1 vs 4 devices,
budgets refused).
"""

import concurrent.futures

import numpy as np
import pytest

from gmia import parallel
from gmia.diffusion import trainer
from gmia.models import unet as unet_lib
from gmia.privacy import accounting
from tests.multidevice import run_with_devices
from tests.dp_checks import check_budgets_refused, check_recorded_guarantee, check_same_run
from tests.resume_check import check_resume
from train.configs import diffusion_dp_cpu_demo, diffusion_dp_tiny

STEPS = 8

EQUIVALENCE = """
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from gmia import parallel
from gmia.diffusion import trainer
from gmia.models import unet as unet_lib
from train.configs import diffusion_dp_tiny

people, photos = 8, 2  # The ordinary step's 16 photos as 8 people of 2.
config = diffusion_dp_tiny.get_config()
config.data.resolution = res = 8  # Programs that compile in float64 in seconds.
config.model.dtype = "float64"
config.batch_size = people * photos
config.privacy.update(people_per_step=float(people), max_photos_per_person=photos,
                      clip_norm=float("inf"))
plain = config.copy_and_resolve_references()
plain.privacy.enabled = False
unet = unet_lib.from_config(config)
mesh = parallel.make_mesh()
ordinary = jax.jit(trainer.make_train_step(plain, unet, mesh))
private = jax.jit(trainer.make_train_step(config, unet, mesh, noise_multiplier=0.0))
rng = np.random.default_rng(0)
states = [trainer.init_state(config, unet)] * 2
for step in range(2):
  x0 = rng.uniform(-1, 1, (people * photos, res, res, 3))
  people_batch = {{"images": x0.reshape(people, photos, res, res, 3),
                   "mask": np.ones((people, photos))}}
  states[0], metrics_ordinary = ordinary(states[0], x0)
  states[1], metrics_private = private(states[1], people_batch)
RESULT = {{}}
for which, state in zip(("ordinary", "private"), states):
  for i, leaf in enumerate(jax.tree.leaves(state)):
    RESULT[f"{{which}}/{{i}}"] = leaf
# The last person's second photo masked out, once clean and once holding garbage.
masked = dict(people_batch, mask=people_batch["mask"].copy())
masked["mask"][-1, 1] = 0
garbage = masked["images"].copy()
garbage[-1, 1] = 1e3
for which, images in (("clean", masked["images"]), ("garbage", garbage)):
  state, _ = private(states[1], dict(masked, images=images))
  for i, leaf in enumerate(jax.tree.leaves(state)):
    RESULT[f"{{which}}/{{i}}"] = leaf
RESULT["private_metrics"] = np.array(sorted(metrics_private))
"""


def test_private_step_without_clipping_or_noise_is_the_ordinary_step():
  """Two steps of the private step, clip norm inf and noise 0, on the ordinary step's 16 photos
  as 8 people of 2, equal the ordinary step's in float64 to 1e-12 (summing per-person gradients
  only reorders the float sums: the Adam moments of biases that a group norm follows, whose
  gradient is 0 but for rounding, sit near 5e-14 and differ by as much); a masked photo place
  changes nothing whatever it holds."""
  result = run_with_devices(1, EQUIVALENCE.format(), timeout=900)
  leaves = [k.split("/")[1] for k in result if k.startswith("ordinary/")]
  assert len(leaves) > 20
  for i in leaves:
    want, got = result[f"ordinary/{i}"], result[f"private/{i}"]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"leaf {i}")
  # A masked photo place changes nothing whatever it holds, and masking is a different step.
  for i in leaves:
    np.testing.assert_array_equal(result[f"garbage/{i}"], result[f"clean/{i}"], err_msg=i)
  assert any(not np.array_equal(result[f"clean/{i}"], result[f"private/{i}"]) for i in leaves)
  assert set(result["private_metrics"]) == {"ema_decay", "noisy_grad_norm"}


def _config(data_dir, **fields):
  config = diffusion_dp_tiny.get_config()
  config.num_steps, config.checkpoint_every, config.log_every = STEPS, STEPS // 2, STEPS // 2
  config.data.data_dir = str(data_dir)
  config.update(fields)
  return config


FOUR_DEVICE_RUN = """
from gmia.diffusion import trainer
from tests.resume_check import final_checkpoint
from train.configs import diffusion_dp_tiny
import jax
config = diffusion_dp_tiny.get_config()
config.num_steps, config.checkpoint_every = {steps}, {steps}
config.data.data_dir = {data_dir!r}
trainer.train_and_evaluate(config, {workdir!r})
RESULT = final_checkpoint({workdir!r})
RESULT["num_devices"] = jax.device_count()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("data")
  trainer.run_data.load_dataset(_config(directory).data)  # Prepared once, before any process.
  return directory


@pytest.fixture(scope="module")
def four_devices(data_dir, tmp_path_factory):
  """The tiny DP run on 4 simulated devices, in the background."""
  code = FOUR_DEVICE_RUN.format(steps=STEPS, data_dir=str(data_dir),
                                workdir=str(tmp_path_factory.mktemp("four") / "run"))
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    yield pool.submit(run_with_devices, 4, code, 900)


@pytest.fixture(scope="module")
def tiny_run(four_devices, data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny"))
  result = trainer.train_and_evaluate(_config(data_dir), workdir)
  return workdir, result.state, result.train_metrics


def test_tiny_dp_run_trains_and_records_its_guarantee(tiny_run):
  workdir, state, metrics = tiny_run
  assert int(state["step"]) == STEPS
  assert set(metrics) == {"ema_decay", "noisy_grad_norm"}
  assert all(np.isfinite(v) for v in metrics.values())
  check_recorded_guarantee(workdir, state, "diffusion", ("params", "ema"), _config(""),
                           steps=STEPS, noisy_steps=STEPS, r1_steps=0, people=6, rate=0.5)


def test_dp_resume_runs_only_the_remaining_steps(tiny_run, data_dir, tmp_path):
  workdir, _, _ = tiny_run
  check_resume(trainer.train_and_evaluate, _config(data_dir), workdir, str(tmp_path / "resumed"))


def test_dp_one_device_equals_four_devices(tiny_run, four_devices):
  check_same_run(tiny_run[0], four_devices.result(), 4)


def test_over_budget_runs_are_refused_before_training(tiny_run, data_dir, tmp_path):
  check_budgets_refused(trainer.train_and_evaluate, lambda **fields: _config(data_dir, **fields),
                        tiny_run[0], tmp_path, steps=STEPS, longer_steps=4 * STEPS)


def test_demo_config_is_valid_for_the_main_jobs_members():
  """diffusion_dp_cpu_demo's private step builds (no compile) and its privacy block is valid
  for the main job's 25 members, with a step's photos those of the ordinary recipe's batch."""
  config = diffusion_dp_cpu_demo.get_config()
  trainer.make_train_step(config, unet_lib.from_config(config), parallel.make_mesh(),
                          noise_multiplier=5.0)
  accounting.check_config(config.privacy, people=config.data.split.members)
  assert accounting.max_people(config.privacy, 25) == 16
  assert config.privacy.people_per_step * config.privacy.max_photos_per_person == (
      config.batch_size)
