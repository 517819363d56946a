"""Person-level DP-SGD for the GAN: the people batches, the private step against the ordinary one
(no clipping, no noise: equal in float64), and the `gan_dp_tiny` trainer end to end (privacy
metadata, nothing private in its metrics, resume bit for bit, 1 vs 8 devices, budgets refused).
"""

import concurrent.futures

import jax
import numpy as np
import pytest

from gmia import parallel
from gmia.gan import train_step, trainer
from gmia.privacy import accounting
from gmia.privacy.sampling import PersonBatches
from tests.dp_checks import check_budgets_refused, check_recorded_guarantee, check_same_run
from tests.multidevice import run_with_devices
from tests.resume_check import check_resume
from train.configs import gan_dp_cpu_demo, gan_dp_tiny

STEPS = 8


def _config(data_dir, **fields):
  config = gan_dp_tiny.get_config()
  config.num_steps, config.checkpoint_every, config.log_every = STEPS, STEPS // 2, STEPS // 2
  config.data.data_dir = str(data_dir)
  config.update(fields)
  return config


# ---------------------------------------------------------------- people batches

def _photos(counts=(5, 1, 3, 8, 2, 4), seed=0):
  """u8 images whose pixels are their row, and their identities (ids 10, 11, ...)."""
  identity = np.repeat(np.arange(len(counts)) + 10, counts)
  rows = np.random.default_rng(seed).permutation(len(identity))
  identity = identity[rows]
  images = np.broadcast_to(np.arange(len(identity), dtype=np.uint8)[:, None, None, None],
                           (len(identity), 2, 2, 3)).copy()
  return images, identity


def _batches(images, identity, **fields):
  args = dict(people_per_step=2.0, max_people=None, max_photos=3, slots=6, seed=1)
  args.update(fields)
  return PersonBatches(images, identity, **args)


def test_people_batches_hold_whole_people_and_are_a_function_of_the_step():
  images, identity = _photos()
  batches = _batches(images, identity)
  for step in range(30):
    rows, _ = batches.rows_at(step)
    batch = batches.at(step)
    assert batch["images"].shape == (6, 3, 2, 2, 3) and batch["mask"].shape == (6, 3)
    np.testing.assert_array_equal(batch["mask"], rows >= 0)
    kept = batches.people_at(step)
    for slot in range(6):
      own = rows[slot][rows[slot] >= 0]
      if slot >= len(kept):
        assert not len(own) and not np.any(batch["images"][slot])
        continue
      person = batches.people[kept[slot]]
      assert np.all(identity[own] == person) and len(own) == min(3, np.sum(identity == person))
      assert len(np.unique(own)) == len(own)
      np.testing.assert_array_equal(batch["images"][slot, :len(own), 0, 0, 0],
                                    own.astype(np.float32) / 127.5 - 1.0)
    for name, array in batches.at(step).items():
      np.testing.assert_array_equal(array, batch[name])


def test_people_are_poisson_sampled_and_truncated():
  images, identity = _photos()
  batches = _batches(images, identity, people_per_step=2.4)
  counts = np.zeros(6)
  sizes = []
  for step in range(4000):
    kept = batches.people_at(step)
    counts[kept] += 1
    sizes.append(len(kept))
  # Each of the 6 people independently at rate 0.4: binomial(4000, 0.4) has sd 31.
  np.testing.assert_allclose(counts, 1600, atol=5 * 31)
  np.testing.assert_allclose(np.mean(sizes), 2.4, atol=0.05)
  np.testing.assert_allclose(np.var(sizes), 6 * 0.4 * 0.6, rtol=0.1)
  truncated = _batches(images, identity, people_per_step=2.4, max_people=2, slots=2)
  for step in range(200):
    kept, sampled = truncated.people_at(step), batches.people_at(step)
    assert len(kept) == min(2, len(sampled)) and np.all(np.isin(kept, sampled))


def _contribution(batches, images, identity, step, person):
  """(The photos, as their pixel values, and the flips) `person` brings to step `step`; None
  when the step does not keep them."""
  rows, flips = batches.rows_at(step)
  for slot in range(len(rows)):
    own = rows[slot][rows[slot] >= 0]
    if len(own) and identity[own[0]] == person:
      return images[own, 0, 0, 0], flips[slot, :len(own)]
  return None


def test_a_persons_photos_do_not_depend_on_who_else_is_there():
  """Person 13 brings 3 of their 8 photos, the same ones and flips with or without person 11
  in the data (the Poisson draws themselves differ with the number of people)."""
  images, identity = _photos()
  everyone = _batches(images, identity, mirror=True)
  others = identity != 11
  without = _batches(images[others], identity[others], people_per_step=2.0 * 5 / 6,
                     mirror=True, slots=5)
  compared = 0
  for step in range(60):
    a = _contribution(everyone, images, identity, step, 13)
    b = _contribution(without, images[others], identity[others], step, 13)
    if a is not None and b is not None:
      for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
      compared += 1
  assert compared >= 5
  # ... and they are not always the same 3 photos.
  assert len({tuple(_contribution(everyone, images, identity, step, 13)[0])
              for step in range(60)
              if _contribution(everyone, images, identity, step, 13) is not None}) > 3


def test_each_process_materialises_its_rows():
  images, identity = _photos()
  whole = _batches(images, identity).at(7)
  halves = [_batches(images, identity, process_index=i, process_count=2).at(7) for i in (0, 1)]
  for name in whole:
    np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), whole[name])
  with pytest.raises(ValueError, match="slots=5 must hold"):
    _batches(images, identity, slots=5, process_count=2, process_index=0)
  with pytest.raises(ValueError, match="people_per_step=7.0"):
    _batches(images, identity, people_per_step=7.0)


# ---------------------------------------------------------------- private step = ordinary step

EQUIVALENCE = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from gmia import parallel
from gmia.gan import train_step
from train.configs import gan_dp_tiny

people, photos = 8, 2  # The ordinary step's 16 real photos as 8 people of 2.
config = gan_dp_tiny.get_config()
config.data.resolution = res = 8  # Programs that compile in float64 in seconds.
config.privacy.update(people_per_step=float(people), max_photos_per_person=photos,
                      clip_norm=float("inf"), r1_clip_norm=float("inf"))
plain = config.copy_and_resolve_references()
plain.privacy.enabled = False
models = train_step.build_models(config)
mesh = parallel.make_mesh()
ordinary = jax.jit(train_step.make_train_step(plain, models, mesh))
private = jax.jit(train_step.make_train_step(config, models, mesh, noise_multiplier=0.0))
RESULT = {{}}
states = [jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating)
                       else x, train_step.init_state(config, models))] * 2
rng = np.random.default_rng(0)
for step in range(2):  # Step 0 has an R1 update, step 1 not.
  reals = rng.uniform(-1, 1, (people * photos, res, res, 3))
  # Two empty slots (mask 0) after the people: they must add nothing.
  images = np.concatenate([reals.reshape(people, photos, res, res, 3),
                           np.zeros((2, photos, res, res, 3))])
  mask = np.concatenate([np.ones((people, photos)), np.zeros((2, photos))])
  states[0], metrics_ordinary = ordinary(states[0], reals)
  states[1], metrics_private = private(states[1], {{"images": images, "mask": mask}})
for which, state in zip(("ordinary", "private"), states):
  for i, leaf in enumerate(jax.tree.leaves(dict(state, r1_penalty=0.0))):
    RESULT[f"{{which}}/{{i}}"] = leaf
RESULT["private_r1_penalty"] = states[1]["r1_penalty"]
RESULT["private_metrics"] = np.array(sorted(metrics_private))
for key in ("loss_g", "d_fake"):
  RESULT[key] = np.array([metrics_ordinary[key], metrics_private[key]])
"""


def test_private_step_without_clipping_or_noise_is_the_ordinary_step():
  """Two steps (one with an R1 update) of the private step, clip norms inf and noise 0, from the
  same state on the same photos as 8 people of 2 (and 2 empty slots), equal the ordinary step's
  in float64 to 1e-12: summing per-person gradients only reorders the float sums. In float32
  that reordering moved the parameters by up to 2.4e-7 here (2.8e-6 at 32 px; Adam divides
  each gradient by its own scale, so an entry near 0 can move by far more than its rounding),
  hence the float64 check. 8 px: the float64 programs compile in a fraction of 32 px's time."""
  result = run_with_devices(1, EQUIVALENCE.format(), timeout=900)
  leaves = [k.split("/")[1] for k in result if k.startswith("ordinary/")]
  assert len(leaves) > 30
  for i in leaves:
    want, got = result[f"ordinary/{i}"], result[f"private/{i}"]
    assert got.dtype == want.dtype and (want.dtype != np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"leaf {i}")
  for key in ("loss_g", "d_fake"):
    np.testing.assert_allclose(result[key][1], result[key][0], rtol=1e-12)
  # Nothing read from the photos is stored or reported by the private step.
  assert result["private_r1_penalty"] == 0
  assert set(result["private_metrics"]) == {
      "d_fake", "ema_beta", "grads_nonfinite", "loss_d_fake", "loss_g", "pl_mean", "pl_penalty"}


# ---------------------------------------------------------------- the tiny DP trainer end to end

EIGHT_DEVICE_RUN = """
import runpy, sys
import jax
from tests.resume_check import final_checkpoint

sys.argv = ["train_gan", "--config=train/configs/gan_dp_tiny.py", "--config.num_steps={steps}",
            "--config.checkpoint_every={steps}", "--config.data.data_dir={data_dir}",
            "--workdir={workdir}"]
try:
  runpy.run_module("train.train_gan", run_name="__main__")
except SystemExit as exit:
  assert not exit.code, exit.code
RESULT = final_checkpoint({workdir!r})
RESULT["num_devices"] = jax.device_count()
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """The tiny DP run on 8 simulated devices through the CLI, in the background."""
  root = tmp_path_factory.mktemp("eight")
  code = EIGHT_DEVICE_RUN.format(steps=STEPS, data_dir=root / "data", workdir=str(root / "run"))
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    yield pool.submit(run_with_devices, 8, code, 900)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def tiny_run(eight_devices, data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny"))
  result = trainer.train_and_evaluate(_config(data_dir), workdir)
  return workdir, result.state, result.train_metrics


def test_tiny_dp_run_trains_and_records_its_guarantee(tiny_run):
  workdir, state, metrics = tiny_run
  assert int(state["step"]) == STEPS
  assert set(metrics) == {"d_fake", "ema_beta", "grads_nonfinite", "loss_d_fake", "loss_g",
                          "pl_mean", "pl_penalty"}
  assert all(np.isfinite(v) for v in metrics.values())
  assert float(state["r1_penalty"]) == 0
  config = _config("")
  # R1 updates at steps 0 and 4 of 0..7 release a second time from their step's people.
  privacy = check_recorded_guarantee(workdir, state, "gan", ("g_params", "d_params", "g_ema"),
                                     config, steps=STEPS, noisy_steps=STEPS + 2, r1_steps=2,
                                     people=6, rate=0.5)
  assert privacy["r1_clip_norm"] == config.privacy.r1_clip_norm


def test_dp_resume_runs_only_the_remaining_steps(tiny_run, data_dir, tmp_path):
  workdir, _, _ = tiny_run
  check_resume(trainer.train_and_evaluate, _config(data_dir), workdir, str(tmp_path / "resumed"))


def test_dp_one_device_equals_eight_devices(tiny_run, eight_devices):
  check_same_run(tiny_run[0], eight_devices.result(), 8)


def test_over_budget_runs_are_refused_before_training(tiny_run, data_dir, tmp_path):
  # Resumed with twice the steps at the noise the run started with (calibrated for STEPS).
  check_budgets_refused(trainer.train_and_evaluate, lambda **fields: _config(data_dir, **fields),
                        tiny_run[0], tmp_path, steps=STEPS, longer_steps=2 * STEPS)
  mixing = _config(data_dir)
  mixing.model.mbstd_num_channels = 1
  with pytest.raises(ValueError, match="minibatch-std"):
    trainer.train_and_evaluate(mixing, str(tmp_path / "mbstd"))


def test_demo_config_builds():
  """gan_dp_cpu_demo's models, state and private step build (abstractly: no compile), and its
  privacy block is valid for the main job's 25 members."""
  config = gan_dp_cpu_demo.get_config()
  models = train_step.build_models(config)
  state = jax.eval_shape(lambda: train_step.init_state(config, models))
  assert state["d_params"]["b4"]["conv"]["weight"].shape[-2] == 64  # No minibatch-std channel.
  train_step.make_train_step(config, models, parallel.make_mesh(), noise_multiplier=7.45)
  accounting.check_config(config.privacy, people=config.data.split.members)
  assert accounting.max_people(config.privacy, 25) == 16
  assert config.privacy.people_per_step * config.privacy.max_photos_per_person == (
      config.batch_size)
