"""GAN-Leaks' white-box attack against its peer: gmia's batched projection vs scipy L-BFGS-B.

  python bench/bench_gan_leaks.py [--generator_workdir=runs/demo/gan] [--targets=20] [--rounds=3]

GAN-Leaks (DingfanChen/GAN-Leaks, attack_models/wb_*.py) reconstructs each query x by minimising
||G(z) - x||^2 (+ LPIPS, + a latent-norm term) with scipy's L-BFGS-B, maxfun 1000, over batches
of 20 queries optimised as one vector. Here both sides minimise the same loss, the mean squared
pixel error of G(w) against the target over one w (W space, from w_avg, no noise inputs; LPIPS
has no weights offline), with the same budget of loss-and-gradient evaluations per target:
  gmia  gmia.inversion.latent's projection of all targets in one batch, each step one jitted call
        vmapped over the targets: Adam (learning-rate ramps, `--evaluations` steps), and L-BFGS
        (each target stopping on its own, at most `--evaluations` evaluations; the projection's
        default tolerance);
  peer  scipy.optimize.minimize(method="L-BFGS-B", options={"maxfun": --evaluations}) driving the
        same loss and gradient, jitted, one query at a time, and in GAN-Leaks' batches of 20
        queries as one vector (the budget is then the batch's): --peer_batches.
Prints each one's targets/s (median over --rounds interleaved rounds: the machine may be shared),
the median and mean residual ||G(w) - x|| (the white-box attack's distance) and evaluations, and
gmia's ratios to each peer setting. Targets: the members' training photos of --generator_workdir
(the queries of the attack), or without one samples of a randomly initialised generator of the
main job's size (targets it can reach exactly).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from absl import app, flags

from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.gan import sampling, train_step
from gmia.inversion import latent
from gmia.jobs import reconstruction
from gmia.models import stylegan
from gmia.runs import load_run
from train.configs import gan_cpu_demo

_WORKDIR = flags.DEFINE_string("generator_workdir", "", "Trained generator (default: random).")
_TARGETS = flags.DEFINE_integer("targets", 20, "Targets reconstructed by each side.")
_EVALUATIONS = flags.DEFINE_integer("evaluations", 1000, "Loss-and-gradient evaluations.")
_PEER_BATCHES = flags.DEFINE_list("peer_batches", ["1", "20"],
                                  "Queries per L-BFGS-B problem, one peer setting each.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Interleaved timing rounds; the median is reported.")
_W_AVG_SAMPLES = 10_000


def generator_and_targets(workdir: str, num: int) -> tuple[stylegan.Generator, dict, np.ndarray]:
  """(generator, g_vars, targets f32[num, R, R, 3] in [-1, 1])."""
  if workdir:
    run = load_run(workdir, "gan")
    generator, g_vars, config = run.model, run.variables, run.config
    split = IdentitySplit.load(os.path.join(workdir, run_data.SPLIT_FILE))
    photos = split.train_photos(config.train_group)[:num]
    images = run_data.load_dataset(config.data).select(photos).images
    return generator, g_vars, images.astype(np.float32) / 127.5 - 1.0
  generator = train_step.build_models(gan_cpu_demo.get_config()).generator
  g_vars = jax.jit(lambda: generator.init({"params": jax.random.key(0), "noise": jax.random.key(1)},
                                          jnp.zeros((1, generator.z_dim))))()
  g_vars = {"params": g_vars["params"], "buffers": g_vars["buffers"]}
  targets = sampling.generate(generator, g_vars, seed=1, num=num, noise_mode="none")
  return generator, g_vars, np.asarray(targets, np.float32)


def gmia_projector(generator, optimizer: str, evaluations: int):
  """Projection of every target in one batch, as the bench times it."""
  settings = latent.ProjectionSettings(num_steps=evaluations, optimizer=optimizer,
                                       noise_mode="none", initial_noise_factor=0.0,
                                       w_avg_samples=_W_AVG_SAMPLES)
  return latent.make_projector(generator, settings)


def run_gmia(project, g_vars, targets: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
  """(residual f64[N], seconds, evaluations used per target) of one projection of every target."""
  keys = latent.target_keys(0, np.arange(len(targets)))
  started = time.perf_counter()
  result = jax.block_until_ready(project(g_vars, None, jnp.asarray(targets), keys))
  seconds = time.perf_counter() - started
  residual = reconstruction.projection_residual(result["pixel_mse"], targets.shape[1:])
  return np.asarray(residual, np.float64), seconds, np.asarray(result["evaluations"])


def make_loss(generator, g_vars):
  """Jitted (w f32[B, w_dim], targets f32[B, R, R, 3]) -> (mean over B of the pixel MSE, its
  gradient): the projection's loss without noise inputs, summed as GAN-Leaks averages a batch."""
  generator = generator.clone(fused_modconv=False)  # The projection's form of the network.
  layers = stylegan.num_ws(generator.img_resolution)

  def mse(w, target):
    ws = jnp.broadcast_to(w, (layers, w.shape[-1]))[None]
    image = generator.apply(g_vars, ws, "none", method=generator.synthesize)[0]
    return jnp.mean(jnp.square(image - target))

  return jax.jit(jax.value_and_grad(lambda w, x: jnp.mean(jax.vmap(mse)(w, x))))


def make_peer(generator, g_vars, targets: np.ndarray, evaluations: int, batch: int):
  """`run() -> (residual f64[N], seconds, evaluations used per problem)` of L-BFGS-B from w_avg."""
  loss_and_grad = make_loss(generator, g_vars)
  w_avg, _ = latent.latent_statistics(generator, g_vars, jax.random.key(0), _W_AVG_SAMPLES)
  w_avg = np.asarray(w_avg, np.float64)
  shape = (batch, w_avg.shape[0])
  groups = [jnp.asarray(targets[i:i + batch]) for i in range(0, len(targets), batch)]

  def solve(x):
    def fun(flat):
      value, grad = loss_and_grad(jnp.asarray(flat.reshape(shape), jnp.float32), x)
      return float(value), np.asarray(grad, np.float64).ravel()
    return scipy.optimize.minimize(fun, np.tile(w_avg, batch), jac=True, method="L-BFGS-B",
                                   options={"maxfun": evaluations})

  def run():
    started = time.perf_counter()
    found = [solve(x) for x in groups]
    seconds = time.perf_counter() - started
    ws = jnp.asarray(np.stack([f.x.reshape(shape) for f in found]), jnp.float32)
    mse = [loss_and_grad(w[j:j + 1], x[j:j + 1])[0] for w, x in zip(ws, groups)
           for j in range(len(x))]
    residual = reconstruction.projection_residual(jnp.asarray(mse), targets.shape[1:])
    return np.asarray(residual, np.float64), seconds, np.array([f.nfev for f in found])

  loss_and_grad(jnp.zeros(shape, jnp.float32), groups[0])  # Compiles.
  return run


def main(argv):
  del argv
  peer_batches = [int(b) for b in _PEER_BATCHES.value]
  if any(_TARGETS.value % b for b in peer_batches):
    raise app.UsageError("--targets must be a multiple of every --peer_batches")
  generator, g_vars, targets = generator_and_targets(_WORKDIR.value, _TARGETS.value)
  evaluations = _EVALUATIONS.value
  source = _WORKDIR.value or "a random generator's own samples"
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; {len(targets)} targets "
        f"at {targets.shape[1]} px from {source}; at most {evaluations} loss-and-gradient "
        f"evaluations per target for gmia, per problem for the peer; {_ROUNDS.value} round(s)")
  runs = {}
  for name, optimizer in (("gmia Adam", "adam"), ("gmia L-BFGS", "lbfgs")):
    project = gmia_projector(generator, optimizer, evaluations)
    run_gmia(project, g_vars, targets)  # Compiles.
    runs[name] = functools.partial(run_gmia, project, g_vars, targets)
  for batch in peer_batches:
    runs[f"scipy L-BFGS-B x{batch}"] = make_peer(generator, g_vars, targets, evaluations, batch)
  found = {name: [] for name in runs}
  for _ in range(_ROUNDS.value):
    for name, run in runs.items():
      found[name].append(run())
  results = {}
  for name, rounds in found.items():
    residual, _, used = rounds[-1]
    rate = len(targets) / np.median([seconds for _, seconds, _ in rounds])
    results[name] = (rate, residual)
    print(f"{name:>20}: {rate:8.3f} targets/s  residual median {np.median(residual):.4f} mean "
          f"{np.mean(residual):.4f}  evaluations median {np.median(used):.0f} max {used.max()}")
  peers = [name for name in results if name.startswith("scipy")]
  fastest = max(peers, key=lambda name: results[name][0])
  for ours in ("gmia Adam", "gmia L-BFGS"):
    rate, residual = results[ours]
    for peer in peers:
      peer_rate, peer_residual = results[peer]
      print(f"{ours} / {peer}{' (fastest)' if peer == fastest else ''}: {rate / peer_rate:.2f}x "
            f"targets/s, median residual {np.median(residual) / np.median(peer_residual):.3f}x, "
            f"lower on {np.mean(residual < peer_residual):.0%} of the targets")


if __name__ == "__main__":
  app.run(main)
