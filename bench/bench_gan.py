"""StyleGAN2 speed: generator images/s, training steps/s and compile times at 32 and 64 px.

    python bench/bench_gan.py                         # the cpu_demo model at 32 and 64 px
    python bench/bench_gan.py --config train/configs/gan_tiny.py --resolutions 32 --batch 16

The peer is the other modulation path: `batched` (activations scaled per sample around one
shared convolution, NVIDIA's training path) against `fused` (one grouped convolution with a
weight per sample, NVIDIA's inference path). Both compute the same function (tests/
test_stylegan_ops.py); the faster one should be the config default on this backend.
Each measurement keeps the fastest of `--rounds` rounds, which evens out load from other
processes. Compile time is timed separately (lowering included).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import parallel  # noqa: E402
from gmia.gan import sampling, train_step  # noqa: E402

PATHS = {"batched": False, "fused": True}


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def best_seconds(run, iters: int, rounds: int) -> float:
  """Seconds per call of the fastest of `rounds` rounds of `iters` calls of `run`."""
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(iters):
      out = run()
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - start)
  return best / iters


def timed_compile(fn, *args):
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def bench(config, resolution: int, fused: bool, batch: int, iters: int,
          rounds: int) -> dict[str, float]:
  config = config.copy_and_resolve_references()
  config.data.resolution, config.batch_size, config.model.fused_modconv = resolution, batch, fused
  models = train_step.build_models(config)
  mesh = parallel.make_mesh()
  state = jax.jit(lambda: train_step.init_state(config, models)).lower().compile(
      {"xla_backend_optimization_level": 0})()
  g_vars = {"params": state["g_ema"], "buffers": state["g_buffers"]}
  z = sampling.latents(0, batch, config.model.z_dim)
  key = jax.random.key(0)

  sample, sample_compile = timed_compile(sampling.make_sampler(models.generator), g_vars, z, key)
  sample_s = best_seconds(lambda: sample(g_vars, z, key), iters, rounds)

  reals = jax.random.uniform(key, (batch, resolution, resolution, 3), minval=-1, maxval=1)
  step, step_compile = timed_compile(  # Jitted as the training loop does, the state donated.
      jax.jit(train_step.make_train_step(config, models, mesh), donate_argnums=0), state, reals)
  holder = [state]

  def one_step():
    holder[0], metrics = step(holder[0], reals)
    return metrics

  one_step()
  # A cycle of d_reg_interval steps holds the regularised steps in their true proportion.
  cycle = config.loss.d_reg_interval
  step_s = best_seconds(one_step, cycle * max(1, iters // cycle), rounds)
  return {"g_images_per_s": batch / sample_s, "g_compile_s": sample_compile,
          "train_steps_per_s": 1 / step_s, "train_images_per_s": batch / step_s,
          "train_compile_s": step_compile}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train/configs/gan_cpu_demo.py"))
  parser.add_argument("--resolutions", default="32,64")
  parser.add_argument("--paths", default="batched,fused")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--iters", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = load_config(args.config)
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, config {args.config}, "
        f"batch {args.batch}, channels base {config.model.channel_base} max "
        f"{config.model.channel_max}")
  print(f"{'res':>4} {'path':>8} {'G img/s':>9} {'G compile s':>12} {'train step/s':>13} "
        f"{'train img/s':>12} {'step compile s':>15}")
  for resolution in (int(r) for r in args.resolutions.split(",")):
    results = {}
    for path in args.paths.split(","):
      r = results[path] = bench(config, resolution, PATHS[path], args.batch, args.iters,
                                args.rounds)
      print(f"{resolution:>4} {path:>8} {r['g_images_per_s']:>9.1f} {r['g_compile_s']:>12.1f} "
            f"{r['train_steps_per_s']:>13.2f} {r['train_images_per_s']:>12.1f} "
            f"{r['train_compile_s']:>15.1f}", flush=True)
    if {"batched", "fused"} <= results.keys():
      b, f = results["batched"], results["fused"]
      g_ratio = f["g_images_per_s"] / b["g_images_per_s"]
      step_ratio = f["train_steps_per_s"] / b["train_steps_per_s"]
      print(f"{resolution:>4} fused/batched speed: generator x{g_ratio:.2f}, "
            f"train step x{step_ratio:.2f}")


if __name__ == "__main__":
  main()
