"""What a latent encoder start saves the projection: steps and error, against the w_avg start.

  python bench/bench_latent_encoder.py --generator_workdir=/tmp/exp/m25/gan \
      --encoder_workdir=/tmp/latent_encoder

Trains the encoder first (train/configs/latent_encoder_cpu_demo.py) when --encoder_workdir holds
no checkpoint. Targets: held-out generator samples G(w*) (constant noise, latents no training
batch used) and real photos (the members' training photos the reconstruction attack projects).
For each projection budget (num_steps; NVIDIA's schedule stretches to the budget, so each
budget is its own run), each start (w_avg, encoder) and each initial_noise_factor (the noise
added to w helps a w_avg start out of poor basins and shakes an encoder start out of a good
one), the mean pixel MSE and PSNR of the result. Prints the error ratio at equal budgets, the
smallest budget at which each start reaches the error of the attack's default projection (w_avg,
first noise factor, largest budget) and the steps ratio, and the throughputs that say after how
many targets training the encoder pays for itself.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import metrics, parallel, progress  # noqa: E402
from gmia.checkpoint import Checkpointer  # noqa: E402
from gmia.data import run_data  # noqa: E402
from gmia.data.split import IdentitySplit  # noqa: E402
from gmia.gan import sampling  # noqa: E402
from gmia.inversion import latent, latent_encoder_training  # noqa: E402
from gmia.jobs import reconstruction  # noqa: E402
from gmia.models import latent_encoder  # noqa: E402
from gmia.runs import load_run  # noqa: E402
from train.configs import latent_encoder_cpu_demo  # noqa: E402

_GENERATOR = flags.DEFINE_string("generator_workdir", None, "Trained generator.", required=True)
_ENCODER = flags.DEFINE_string("encoder_workdir", None,
                               "Latent encoder of that generator; trained here when empty.",
                               required=True)
_TARGETS = flags.DEFINE_integer("num_targets", 8, "Targets per kind.")
_BUDGETS = flags.DEFINE_list("budgets", ["25", "50", "100", "200", "400"],
                             "Projection num_steps to compare, increasing.")
_NOISE = flags.DEFINE_list(
    "noise_factors", ["0.05", "0"],
    "Projection initial_noise_factor values; the first is the default the others compare to.")
_REAL = flags.DEFINE_bool("real_photos", True, "Also project the members' training photos.")
_TIMED = flags.DEFINE_integer("timed_train_steps", 30, "Encoder training steps timed.")
HELD_OUT_SEED = 1_000_003  # Latents of the generated targets: key(seed), unlike any training batch.


def encoder_training_speed(generator, g_vars, steps: int) -> float:
  """Encoder training steps/s of the demo config (after a compiling step)."""
  config = latent_encoder_cpu_demo.get_config()
  encoder = latent_encoder.from_config(config, generator.img_resolution, generator.w_dim)
  w_avg, w_std = latent_encoder_training.latent_moments(generator, g_vars, jax.random.key(0), 256)
  optimizer = latent_encoder_training.make_optimizer(config)
  state = latent_encoder_training.init_state(encoder, optimizer, w_avg, w_std, jax.random.key(0))
  step = jax.jit(latent_encoder_training.make_train_step(config, encoder, generator,
                                                        parallel.make_mesh()), donate_argnums=0)
  state, _ = jax.block_until_ready(step(state, g_vars))
  start = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, g_vars)
  jax.block_until_ready(out)
  return steps / (time.perf_counter() - start)


def targets_of(generator, g_vars, num: int) -> dict[str, np.ndarray]:
  """{kind: f32[num, R, R, 3] in [-1, 1]}: held-out generated faces, and real photos."""
  kinds = {"generated": sampling.generate(generator, g_vars, seed=HELD_OUT_SEED, num=num)}
  if _REAL.value:
    g_config = load_run(_GENERATOR.value, "gan").config
    split = IdentitySplit.load(os.path.join(_GENERATOR.value, run_data.SPLIT_FILE))
    photos = split.train_photos("members")
    ids = np.random.default_rng(0).choice(photos, min(num, len(photos)), replace=False)
    arrays = run_data.load_dataset(g_config.data).select(ids)
    kinds["real"] = arrays.images.astype(np.float32) / 127.5 - 1.0
  return kinds


def sweep(generator, g_vars, targets, start_ws, budgets, noise_factor) -> tuple[float, list]:
  """(start MSE, [{"steps", "mse", "psnr"} per budget]), means over targets, of the attack's
  default projection with the given initial_noise_factor; the last budget's row also has the
  "seconds" of a compiled call."""
  keys = latent.target_keys(0, range(len(targets)))
  rows, start_mse = [], None
  for steps in budgets:
    settings = latent.ProjectionSettings(**dict(
        reconstruction.default_config().projection.to_dict(), num_steps=steps,
        initial_noise_factor=noise_factor))
    project = latent.make_projector(generator, settings)
    out = jax.block_until_ready(project(g_vars, None, targets, keys, start_ws))
    row = {"steps": steps, "mse": float(jnp.mean(out["pixel_mse"])),
           "psnr": float(jnp.mean(metrics.psnr(out["images"], targets)))}
    if steps == budgets[-1]:  # Timed again, compiled.
      began = time.perf_counter()
      jax.block_until_ready(project(g_vars, None, targets, keys, start_ws))
      row["seconds"] = time.perf_counter() - began
    start_mse = float(jnp.mean(out["start_mse"]))
    rows.append(row)
  return start_mse, rows


def steps_to_reach(rows: list[dict], mse: float) -> int | None:
  """The smallest budget whose result is at most `mse`, None if none is."""
  return next((r["steps"] for r in rows if r["mse"] <= mse), None)


def main(argv):
  del argv
  progress.quiet_library_logs()
  budgets = sorted(int(b) for b in _BUDGETS.value)
  noise_factors = [float(f) for f in _NOISE.value]
  gan = load_run(_GENERATOR.value, "gan")
  generator, g_vars = gan.model, gan.variables
  if Checkpointer(_ENCODER.value).latest_step() is None:
    config = latent_encoder_cpu_demo.get_config()
    config.generator = f"gmia:{_GENERATOR.value}"
    began = time.perf_counter()
    latent_encoder_training.train_and_evaluate(config, _ENCODER.value)
    print(f"trained the encoder ({config.num_steps} steps) in {time.perf_counter() - began:.0f} s")
  start = latent_encoder_training.encoder_start(_ENCODER.value, generator)
  trained_steps = Checkpointer(_ENCODER.value).latest_step()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; generator "
        f"{generator.img_resolution} px, w_dim {generator.w_dim}; projection: the attack's "
        f"defaults (W, noise maps), {_TARGETS.value} targets per kind")
  for kind, targets in targets_of(generator, g_vars, _TARGETS.value).items():
    targets = jnp.asarray(targets)
    runs = {(name, factor): sweep(generator, g_vars, targets, start_ws, budgets, factor)
            for factor in noise_factors
            for name, start_ws in (("w_avg", None), ("encoder", start(targets)))}
    a_start, e_start = runs["w_avg", noise_factors[0]][0], runs["encoder", noise_factors[0]][0]
    print(f"\n{kind} targets ({len(targets)}): pixel MSE at the start: w_avg {a_start:.4f}, "
          f"encoder {e_start:.4f} ({a_start / e_start:.1f}x lower)")
    for factor in noise_factors:
      from_avg, from_encoder = runs["w_avg", factor][1], runs["encoder", factor][1]
      print(f" initial_noise_factor {factor}:\n steps | w_avg MSE  PSNR | encoder MSE  PSNR | "
            "MSE ratio")
      for a, e in zip(from_avg, from_encoder):
        print(f" {a['steps']:5d} | {a['mse']:9.5f} {a['psnr']:5.2f} | {e['mse']:11.5f} "
              f"{e['psnr']:5.2f} | {a['mse'] / e['mse']:6.2f}x")
    # Against the attack's default projection: the w_avg start, first noise factor, most steps.
    goal = runs["w_avg", noise_factors[0]][1][-1]
    for (name, factor), (_, rows) in runs.items():
      reached = steps_to_reach(rows, goal["mse"])
      outcome = (f"{reached} steps ({goal['steps'] / reached:.1f}x fewer)" if reached
                 else f"none of the budgets up to {budgets[-1]}")
      print(f" {name} start, noise {factor}: reaches the default projection's "
            f"{goal['steps']}-step error ({goal['mse']:.5f}) in {outcome}")
    best = min(filter(None, (steps_to_reach(runs["encoder", f][1], goal["mse"])
                             for f in noise_factors)), default=None)
    # Timed next to the projection: on a shared machine speeds drift over minutes.
    train_speed = encoder_training_speed(generator, g_vars, _TIMED.value)
    speed = goal["steps"] * len(targets) / goal["seconds"]  # Target-steps/s.
    print(f" encoder training {train_speed:.2f} steps/s (batch "
          f"{latent_encoder_cpu_demo.get_config().batch_size}); projection {speed:.0f} "
          f"target-steps/s: one training step costs {speed / train_speed:.0f} target-steps")
    if best and best < goal["steps"]:
      payoff = trained_steps * speed / train_speed / (goal["steps"] - best)
      print(f" the encoder's {trained_steps} training steps pay off after {payoff:.0f} targets")


if __name__ == "__main__":
  app.run(main)
