"""Real ONNX networks through gmia.onnx against onnxruntime, in the same run on this machine.

    python bench/bench_onnx.py                      # SFace batch 256, YuNet batch 16
    python bench/bench_onnx.py --sface_batch 64 --rounds 3

SFace (OpenCV Zoo, int8 blocks): embeddings/s of gmia's jitted function on the batch, imported
at that batch (one vmap-free graph) and imported at batch 1 then mapped over chunks of
`--chunk` samples (apply_each's batch_size), against onnxruntime (CPU provider) on the same
graph with a free batch dim. YuNet (640 px): detections/s of gmia's jitted detect_faces
(network, decoding, NMS, choice) on batches of `--yunet_batch` letterboxed photos, vmapped whole
and mapped one photo at a time, and of the network alone, against onnxruntime running the
network one photo at a time (YuNet's Reshapes fix batch 1). Each engine runs
`--rounds` rounds; its fastest counts, which evens out load from other processes. Compilation
and session creation are timed apart. The networks come from registry packages
(tests/assets.py fetches and caches them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia.faces import detect  # noqa: E402
from gmia.onnx import import_onnx  # noqa: E402
from tests import assets  # noqa: E402


def best_time(run, rounds: int) -> float:
  """Seconds of the fastest of `rounds` calls of `run`."""
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


def timed(label: str, run) -> None:
  start = time.perf_counter()
  run()
  print(f"  {label}: {time.perf_counter() - start:.1f} s")


def gmia_rate(label: str, run, batch: int, rounds: int) -> float:
  timed(f"gmia compile ({label})", lambda: jax.block_until_ready(run()))
  return batch / best_time(lambda: jax.block_until_ready(run()), rounds)


def bench_sface(batch: int, chunk: int, rounds: int) -> None:
  path = assets.sface_path()
  images = np.random.default_rng(0).uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32)
  print(f"SFace, batch {batch}")
  whole = import_onnx(path, input_shapes={"data": (batch, 3, 112, 112)})
  embed = jax.jit(whole.apply)
  rates = {"imported at the batch": gmia_rate(
      "imported at the batch", lambda: embed(whole.params, images), batch, rounds)}
  single = import_onnx(path)
  mapped = jax.jit(lambda p, x: single.apply_each(p, x, batch_size=chunk))
  rates[f"chunks of {chunk}"] = gmia_rate(f"chunks of {chunk}",
                                          lambda: mapped(single.params, images), batch, rounds)
  session = assets.onnxruntime_session(path, free_batch=True)
  timed("onnxruntime session + first batch", lambda: session.run(None, {"data": images}))
  peer = batch / best_time(lambda: session.run(None, {"data": images}), rounds)
  for label, rate in rates.items():
    print(f"  gmia ({label}) {rate:.0f} embeddings/s, onnxruntime {peer:.0f}/s: "
          f"ratio {rate / peer:.2f}")


def bench_yunet(batch: int, rounds: int) -> None:
  path = assets.yunet_path()
  net = detect.load_yunet(path)
  images = np.random.default_rng(0).uniform(0, 255, (batch, 640, 640, 3)).astype(np.float32)
  factors = np.ones(batch, np.float32)
  nchw = np.ascontiguousarray(images[..., ::-1].transpose(0, 3, 1, 2))
  print(f"YuNet 640 px, batch {batch}")
  find = jax.jit(detect.detect_faces, static_argnames=("net", "batch_size"))
  network = jax.jit(lambda p, x: net.apply_each(p, x, batch_size=1))
  rates = {f"detect_faces, {label}": gmia_rate(
      f"detect_faces, {label}", lambda: find(net, net.params, images, factors,
                                              batch_size=size), batch, rounds)
           for label, size in (("whole batch vmapped", None), ("one photo at a time", 1))}
  rates["network alone, one photo at a time"] = gmia_rate(
      "network alone", lambda: network(net.params, nchw), batch, rounds)
  session = assets.onnxruntime_session(path)
  one_by_one = lambda: [session.run(None, {"input": nchw[i:i + 1]}) for i in range(batch)]
  timed("onnxruntime session + first batch", one_by_one)
  peer = batch / best_time(one_by_one, rounds)
  for label, rate in rates.items():
    print(f"  gmia ({label}) {rate:.1f} detections/s, onnxruntime network {peer:.1f}/s: "
          f"ratio {rate / peer:.2f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sface_batch", type=int, default=256)
  parser.add_argument("--chunk", type=int, default=8)
  parser.add_argument("--yunet_batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  bench_sface(args.sface_batch, args.chunk, args.rounds)
  bench_yunet(args.yunet_batch, args.rounds)


if __name__ == "__main__":
  main()
