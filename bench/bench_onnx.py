"""Real ONNX networks through gmia.onnx against onnxruntime, in the same run on this machine.

    python bench/bench_onnx.py                      # SFace batch 256, YuNet batch 16
    python bench/bench_onnx.py --only yunet --rounds 7

SFace (OpenCV Zoo, int8 blocks): embeddings/s of gmia's jitted function on the batch, imported
at that batch (one vmap-free graph) and imported at batch 1 then mapped over chunks of
`--chunk` samples (apply_each's batch_size), against onnxruntime (CPU provider) on the same
graph with a free batch dim. YuNet (640 px): detections/s of gmia's jitted detect_faces
(network, decoding, NMS, choice) on batches of `--yunet_batch` letterboxed photos, mapped one
photo at a time and vmapped whole, and of the network alone, against onnxruntime running the
network one photo at a time (YuNet's Reshapes fix batch 1).

Each round times onnxruntime and then every gmia variant, so that load from other processes
falls on both; the figures are medians over `--rounds` rounds: items/s (wall clock), the ratio
to onnxruntime in the same round, and CPU milliseconds per item (this process's CPU time, all
threads: less sensitive to a shared machine than the wall clock). Compilation and session
creation are timed apart. The networks come from registry packages (tests/assets.py fetches and
caches them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia.faces import detect  # noqa: E402
from gmia.onnx import import_onnx  # noqa: E402
from tests import assets  # noqa: E402


def timed(label: str, run: Callable[[], object]) -> None:
  start = time.perf_counter()
  run()
  print(f"  {label}: {time.perf_counter() - start:.1f} s")


def measure(run: Callable[[], object]) -> tuple[float, float]:
  """(wall seconds, CPU seconds of this process) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  run()
  return time.perf_counter() - wall, time.process_time() - cpu


def compare(peer: Callable[[], object], engines: dict[str, Callable[[], object]], count: int,
            rounds: int, unit: str) -> None:
  """Prints each engine's median rate, ratio to the peer (per round) and CPU ms per item."""
  timed("onnxruntime first call", peer)
  runs = {label: (lambda run=run: jax.block_until_ready(run())) for label, run in engines.items()}
  for label, run in runs.items():
    timed(f"gmia compile ({label})", run)
  results = {label: [] for label in ["onnxruntime", *runs]}
  for _ in range(rounds):
    results["onnxruntime"].append(measure(peer))
    for label, run in runs.items():
      results[label].append(measure(run))
  walls = {label: np.array([wall for wall, _ in r]) for label, r in results.items()}
  cpus = {label: np.median([cpu for _, cpu in r]) * 1e3 / count for label, r in results.items()}
  peer_rate = np.median(count / walls["onnxruntime"])
  print(f"  onnxruntime {peer_rate:.1f} {unit}/s, {cpus['onnxruntime']:.1f} CPU ms each")
  for label in runs:
    rate = np.median(count / walls[label])
    ratio = np.median(walls["onnxruntime"] / walls[label])
    print(f"  gmia ({label}) {rate:.1f} {unit}/s, ratio {ratio:.2f} (median of {rounds} rounds; "
          f"{cpus[label]:.1f} CPU ms each)")


def bench_sface(batch: int, chunk: int, rounds: int) -> None:
  path = assets.sface_path()
  images = np.random.default_rng(0).uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32)
  print(f"SFace, batch {batch}")
  whole = import_onnx(path, input_shapes={"data": (batch, 3, 112, 112)})
  single = import_onnx(path)
  embed = jax.jit(whole.apply)
  mapped = jax.jit(lambda p, x: single.apply_each(p, x, batch_size=chunk))
  session = assets.onnxruntime_session(path, free_batch=True)
  compare(lambda: session.run(None, {"data": images}),
          {"imported at the batch": lambda: embed(whole.params, images),
           f"chunks of {chunk}": lambda: mapped(single.params, images)},
          batch, rounds, "embeddings")


def bench_yunet(batch: int, rounds: int) -> None:
  path = assets.yunet_path()
  net = detect.load_yunet(path)
  images = np.random.default_rng(0).uniform(0, 255, (batch, 640, 640, 3)).astype(np.float32)
  factors = np.ones(batch, np.float32)
  nchw = np.ascontiguousarray(images[..., ::-1].transpose(0, 3, 1, 2))
  print(f"YuNet 640 px, batch {batch}")
  find = jax.jit(detect.detect_faces, static_argnames=("net", "batch_size"))
  network = jax.jit(lambda p, x: net.apply_each(p, x, batch_size=1))
  session = assets.onnxruntime_session(path)
  compare(lambda: [session.run(None, {"input": nchw[i:i + 1]}) for i in range(batch)],
          {"detect_faces, one photo at a time": lambda: find(net, net.params, images, factors,
                                                             batch_size=1),
           "detect_faces, whole batch vmapped": lambda: find(net, net.params, images, factors),
           "network alone, one photo at a time": lambda: network(net.params, nchw)},
          batch, rounds, "detections")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sface_batch", type=int, default=256)
  parser.add_argument("--chunk", type=int, default=8)
  parser.add_argument("--yunet_batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--only", choices=("sface", "yunet"), default=None)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  if args.only != "yunet":
    bench_sface(args.sface_batch, args.chunk, args.rounds)
  if args.only != "sface":
    bench_yunet(args.yunet_batch, args.rounds)


if __name__ == "__main__":
  main()
