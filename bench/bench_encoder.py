"""Face embeddings per second: gmia's jitted IResNet vs onnxruntime on the same network.

    python bench/bench_encoder.py                       # r18 and r50 at 112 px, the demo model
    python bench/bench_encoder.py --models demo --batch 64 --rounds 5

The peer is what insightface users run: onnxruntime (CPU provider) on an insightface-layout ONNX
graph of the same network (tests/iresnet_onnx_export.py of random weights, BNs folded into convs as in
the released files).
Each engine runs `--rounds` rounds of `--iters` batches; its fastest round counts, which evens out
load from other processes. Compilation / session creation is timed separately.
Preprocessing (uint8 -> [-1, 1], resize) is included for gmia, as `embed` does it on device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia.face_encoder.embed import embed  # noqa: E402
from tests.iresnet_onnx_export import INPUT_NAME, export_onnx  # noqa: E402
from gmia.models.iresnet import ARCHS, IResNet, init_key  # noqa: E402

# name -> (blocks, width, features, input size); "demo" is train/configs/face_encoder_cpu_demo.py.
MODELS = {
    "r18": (ARCHS["r18"], 64, 512, 112),
    "r50": (ARCHS["r50"], 64, 512, 112),
    "demo": ((1, 1, 1, 1), 16, 128, 32),
}


def best_rate(run, batch: int, iters: int, rounds: int) -> float:
  """Images per second of the fastest of `rounds` rounds of `iters` calls of `run`."""
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(iters):
      run()
    best = min(best, time.perf_counter() - start)
  return batch * iters / best


def bench(name: str, batch: int, iters: int, rounds: int) -> dict[str, float]:
  import onnxruntime as ort
  blocks, width, features, size = MODELS[name]
  model = IResNet(blocks=blocks, width=width, num_features=features)
  variables = jax.jit(model.init)(init_key(0), jnp.zeros((1, size, size, 3)))
  proto = export_onnx(model, variables, fold_bn=True)
  images = np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

  start = time.perf_counter()
  fn = jax.jit(embed, static_argnums=0)
  device_images = jnp.asarray(images)
  fn(model, variables, device_images).block_until_ready()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
  nchw = ((images.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
  session.run(None, {INPUT_NAME: nchw})
  session_s = time.perf_counter() - start

  gmia_rate = best_rate(lambda: fn(model, variables, device_images).block_until_ready(), batch,
                        iters, rounds)
  ort_rate = best_rate(lambda: session.run(None, {INPUT_NAME: nchw}), batch, iters, rounds)
  return {"gmia": gmia_rate, "onnxruntime": ort_rate, "compile_s": compile_s,
          "session_s": session_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="r18,r50,demo")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  print(f"devices: {jax.devices()}  cpu cores: {os.cpu_count()}  batch {args.batch}")
  print(f"{'model':6} {'size':>4} {'gmia img/s':>11} {'ort img/s':>10} {'ratio':>6} "
        f"{'compile s':>9} {'session s':>9}")
  for name in args.models.split(","):
    if name not in MODELS:
      raise SystemExit(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    r = bench(name, args.batch, args.iters, args.rounds)
    print(f"{name:6} {MODELS[name][3]:4d} {r['gmia']:11.1f} {r['onnxruntime']:10.1f} "
          f"{r['gmia'] / r['onnxruntime']:6.2f} {r['compile_s']:9.1f} {r['session_s']:9.1f}",
          flush=True)


if __name__ == "__main__":
  main()
