"""StyleGAN2 training: losses and regularisers against closed forms, the EMA and Adam formulas,
and the `tiny` trainer end to end (resume bit for bit, 1 vs 8 devices, plain-orbax restore, CLIs).
"""

import concurrent.futures
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmia.checkpoint import Checkpointer
from gmia.data.split import IdentitySplit
from gmia.gan import losses, sampling, train_step, trainer
from gmia.training import ema
from gmia.runs import load_run
from tests.multidevice import run_with_devices
from tests.resume_check import check_resume, final_checkpoint
from train.configs import gan_tiny

STEPS = 8


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _config(data_dir, **fields):
  config = gan_tiny.get_config()
  config.num_steps, config.checkpoint_every, config.log_every = STEPS, STEPS // 2, STEPS // 2
  config.data.data_dir = str(data_dir)
  config.update(fields)
  return config


# ---------------------------------------------------------------- losses, EMA, optimiser

def test_logistic_losses_match_their_definitions():
  real, fake = np.array([2.0, -1.0, 0.5]), np.array([-3.0, 0.2, 1.5])
  np.testing.assert_allclose(losses.generator_loss(fake), np.mean(np.log1p(np.exp(-fake))),
                             rtol=1e-6)
  want = np.mean(np.log1p(np.exp(fake))) + np.mean(np.log1p(np.exp(-real)))
  np.testing.assert_allclose(losses.discriminator_loss(real, fake), want, rtol=1e-6)


def test_r1_penalty_equals_the_closed_form_gradient_norm():
  """D(x)_b = sum(a * x_b) + sum(q * x_b^2) / 2 has gradient a + q * x_b."""
  rng = np.random.default_rng(0)
  a, q = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  x = rng.standard_normal((5, 4, 4, 3)).astype(np.float32)
  penalty, logits = losses.r1_penalty(
      lambda y: jnp.sum(a * y + 0.5 * q * y * y, axis=(1, 2, 3)), jnp.asarray(x))
  np.testing.assert_allclose(penalty, np.sum((a + q * x) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(logits, np.sum(a * x + 0.5 * q * x * x, axis=(1, 2, 3)), rtol=1e-5)


def test_path_length_penalty_on_a_linear_synthesis():
  """images = ws . A: the Jacobian-vector product is A . y, so the lengths are closed form."""
  rng = np.random.default_rng(1)
  a = rng.standard_normal((3, 4, 2 * 2 * 3)).astype(np.float32)  # [num_ws, w_dim, pixels]
  ws = rng.standard_normal((6, 3, 4)).astype(np.float32)
  key = jax.random.key(2)
  synth = lambda w: jnp.einsum("bnd,ndp->bp", w, a).reshape(-1, 2, 2, 3)
  penalty, new_mean = losses.path_length_penalty(synth, jnp.asarray(ws), key, jnp.float32(0.3),
                                                 decay=0.01)
  y = np.asarray(jax.random.normal(key, (6, 2, 2, 3))).reshape(6, -1) / 2.0  # / sqrt(H*W)
  grads = np.einsum("ndp,bp->bnd", a, y)
  lengths = np.sqrt(np.mean(np.sum(grads ** 2, axis=2), axis=1))
  want_mean = 0.3 + 0.01 * (lengths.mean() - 0.3)
  np.testing.assert_allclose(new_mean, want_mean, rtol=1e-5)
  np.testing.assert_allclose(penalty, (lengths - want_mean) ** 2, rtol=1e-4)


@pytest.mark.parametrize("rampup", [0.0, 0.05])
def test_ema_beta_follows_nvidia_formula(rampup):
  batch, ema_kimg = 32, 10.0
  for step in (0, 1, 7, 100, 10_000):
    nimg = ema_kimg * 1000 if not rampup else min(ema_kimg * 1000, step * batch * rampup)
    want = 0.5 ** (batch / max(nimg, 1e-8))
    np.testing.assert_allclose(ema.ema_beta(step, batch, ema_kimg, rampup), want, rtol=1e-5)
  tree = {"w": jnp.array([1.0, 2.0])}
  updated = ema.ema_update(tree, {"w": jnp.array([3.0, -2.0])}, jnp.float32(0.25))
  np.testing.assert_allclose(updated["w"], [0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * -2])


def test_adam_lr_and_betas_are_corrected_for_lazy_regularisation():
  interval, lr, betas, eps = 4, 0.01, (0.5, 0.99), 1e-8
  tx = train_step.make_optimizer(lr, betas, eps, interval)
  mb = interval / (interval + 1)
  b1, b2, lr_mb = betas[0] ** mb, betas[1] ** mb, lr * mb
  params, grads = np.array([1.0, -2.0]), [np.array([0.3, -0.1]), np.array([-0.2, 0.4])]
  state = tx.init(jnp.asarray(params))
  got = jnp.asarray(params)
  m = v = np.zeros(2)
  want = params.copy()
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(jnp.asarray(g), state, got)
    got = optax.apply_updates(got, updates)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    want = want - lr_mb * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------- the tiny trainer end to end

EIGHT_DEVICE_RUN = """
import runpy, sys
import jax
from tests.resume_check import final_checkpoint

sys.argv = ["train_gan", "--config=train/configs/gan_tiny.py", "--config.num_steps={steps}",
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
  """The tiny run on 8 simulated devices through the CLI, started first and in the background:
  it compiles on the second core while this process trains on one device."""
  root = tmp_path_factory.mktemp("eight")
  code = EIGHT_DEVICE_RUN.format(steps=STEPS, data_dir=root / "data", workdir=str(root / "run"))
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    yield pool.submit(run_with_devices, 8, code, 600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def tiny_run(eight_devices, data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny"))
  result = trainer.train_and_evaluate(_config(data_dir), workdir)
  return workdir, result.state, result.train_metrics


def test_tiny_run_trains_and_writes_its_outputs(tiny_run):
  workdir, state, metrics = tiny_run
  assert int(state["step"]) == STEPS
  for name in ("loss_g", "loss_d", "d_real", "d_fake", "pl_mean", "pl_penalty", "r1_penalty"):
    assert np.isfinite(metrics[name]), name
  # The regularisers' latest measured penalties (at steps 4 and 0 of 0..7), not 0 or NaN.
  assert metrics["pl_penalty"] > 0 and metrics["r1_penalty"] > 0
  # The step's EMA beta is the formula's at the last step (cur_nimg = 7 * 16 images).
  np.testing.assert_allclose(metrics["ema_beta"], 0.5 ** (16 / min(100.0, 7 * 16 * 0.05)),
                             rtol=1e-5)
  ckpt = Checkpointer(workdir)
  assert ckpt.all_steps() == [STEPS // 2, STEPS]
  half, meta = ckpt.restore_replicated(STEPS // 2, kind="gan")
  for group in ("g_params", "d_params", "g_ema"):
    before, after = _flat(half[group]), _flat(state[group])
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged, f"{group} did not move: {unchanged}"
  assert meta["config"]["model"]["channel_max"] == 16
  split = IdentitySplit.load(os.path.join(workdir, "split.json"))
  assert meta["split"] == split.to_json()
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
      f"step_{STEPS // 2:07d}.png", f"step_{STEPS:07d}.png"]


def test_resume_runs_only_the_remaining_steps(tiny_run, data_dir, tmp_path):
  workdir, _, _ = tiny_run
  check_resume(trainer.train_and_evaluate, _config(data_dir), workdir, str(tmp_path / "resumed"))
  # num_steps may grow on resume: the run continues where the shorter one stopped.
  shorter = str(tmp_path / "shorter")
  trainer.train_and_evaluate(_config(data_dir, num_steps=STEPS // 2), shorter)
  result = trainer.train_and_evaluate(_config(data_dir), shorter)
  assert result.resumed_from == STEPS // 2 and result.steps_run == STEPS // 2
  want, got = final_checkpoint(workdir), final_checkpoint(shorter)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_one_device_equals_eight_devices(tiny_run, eight_devices):
  workdir, _, _ = tiny_run
  result = eight_devices.result()
  assert int(result.pop("num_devices")) == 8
  want = final_checkpoint(workdir)
  assert want.keys() == result.keys()
  for name in want:
    np.testing.assert_allclose(result[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_plain_orbax_restores_the_checkpoint_without_gmia(tiny_run, tmp_path):
  workdir, state, _ = tiny_run
  out = tmp_path / "g_ema.npz"
  code = f"""
import sys
import jax, numpy as np
import orbax.checkpoint as ocp
mngr = ocp.CheckpointManager({os.path.join(workdir, "checkpoints")!r},
                             item_names=("state", "meta"))
restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
g_ema, config = restored.state["g_ema"], restored.meta["config"]
assert isinstance(g_ema, dict) and isinstance(g_ema["synthesis"]["b4"], dict)
assert config["data"]["resolution"] == 32 and int(restored.state["step"]) == {STEPS}
assert "gmia" not in sys.modules
flat = {{jax.tree_util.keystr(p): np.asarray(v)
         for p, v in jax.tree_util.tree_flatten_with_path(g_ema)[0]}}
np.savez({str(out)!r}, **flat)
"""
  subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), capture_output=True)
  with np.load(out) as restored:
    want = _flat(state["g_ema"])
    assert sorted(restored.files) == sorted(want)
    for name in want:
      np.testing.assert_array_equal(restored[name], want[name])


def test_sampling_and_truncation(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  run = load_run(workdir, "gan")
  generator, g_vars = run.model, run.variables
  assert run.input_size == 32
  images = sampling.generate(generator, g_vars, seed=3, num=5, batch_size=4)
  assert images.shape == (5, 32, 32, 3) and np.all(np.isfinite(images))
  np.testing.assert_array_equal(images, sampling.generate(generator, g_vars, seed=3, num=5,
                                                          batch_size=4))
  assert np.abs(images[0] - images[1]).mean() > 1e-4
  # psi = 0 maps every latent to w_avg: with constant noise, every image is the same.
  collapsed = sampling.generate(generator, g_vars, seed=3, num=4, truncation_psi=0.0)
  np.testing.assert_allclose(collapsed, np.broadcast_to(collapsed[:1], collapsed.shape), atol=1e-5)


def test_clear_errors(tiny_run, data_dir, tmp_path):
  workdir, _, _ = tiny_run
  bad_resolution = _config(data_dir)
  bad_resolution.data.resolution = 48
  with pytest.raises(ValueError, match="power of two"):
    trainer.train_and_evaluate(bad_resolution, str(tmp_path / "res"))
  other = _config(data_dir)
  other.model.channel_max = 8
  with pytest.raises(ValueError, match="another config: model.channel_max"):
    trainer.train_and_evaluate(other, workdir)
  nobody = IdentitySplit(seed=0, groups={
      "members": np.zeros(0, np.int64), "non_members": np.zeros(0, np.int64),
      "shadow": np.zeros(0, np.int64), "encoder": np.array([0])},
      train={0: np.arange(6)}, reference={0: np.zeros(0, np.int64)})
  nobody.save(str(tmp_path / "nobody.json"))
  config = _config(data_dir)
  config.data.split.path = str(tmp_path / "nobody.json")
  with pytest.raises(ValueError, match="no identities in group 'members'"):
    trainer.train_and_evaluate(config, str(tmp_path / "nobody"))



@pytest.mark.parametrize("name,arg", [("gan_cpu_demo", None), ("gan_cifar", None),
                                      ("gan_auto", "32"), ("gan_auto", "128,4"),
                                      ("gan_auto", "256,8")])
def test_configs_build(name, arg):
  """Every config's models and state build (abstractly: no compile) and their step is valid."""
  module = __import__(f"train.configs.{name}", fromlist=["get_config"])
  config = module.get_config() if arg is None else module.get_config(arg)
  models = train_step.build_models(config)
  state = jax.eval_shape(lambda: train_step.init_state(config, models))
  res = config.data.resolution
  assert state["g_ema"]["synthesis"][f"b{res}"]["torgb"]["weight"].shape[-1] == 3
  assert config.batch_size % config.model.mbstd_group_size == 0
  assert config.loss.r1_gamma > 0 and config.ema_kimg > 0
