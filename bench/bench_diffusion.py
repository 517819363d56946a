"""The DDIM sampler: samples/s at 32 and 64 px, gmia against diffusers' own pipeline in PyTorch.

    python bench/bench_diffusion.py --torch_python ~/venvs/diffusers/bin/python
    python bench/bench_diffusion.py --resolutions 32 --batch 16 --steps 20

The U-Net is train/configs/diffusion_cpu_demo.py's (gmia's CPU target; fully convolutional, so
the same network samples 64 px images) with random weights, written as a diffusers UNet2DModel
folder (config.json and diffusion_pytorch_model.safetensors). gmia reads that folder with
gmia.models.import_diffusers and samples it with gmia.diffusion.sampling (one jitted program:
the steps in a lax.scan, the batch together); with `--torch_python` (a Python with torch and
diffusers, e.g. a virtual environment made by `pip install torch diffusers`), diffusers'
`UNet2DModel.from_pretrained` reads the same folder and its `DDIMPipeline` samples it on torch's
CPU path, in a subprocess of this run. Both run `--steps` DDIM steps (eta 0, "leading" spacing,
clip_sample) on `--batch` images; each time is the fastest of `--rounds` rounds, which evens out
load from other processes; compile time is reported apart. The two networks' outputs on one input
are compared too (their relative difference is printed). Without `--torch_python`, a diffusers
installed in this Python is used; without either, gmia alone is timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia.diffusion import sampling  # noqa: E402
from gmia.models import unet as unet_lib  # noqa: E402
from gmia.models import import_diffusers  # noqa: E402
from train.configs import diffusion_cpu_demo  # noqa: E402

# gmia's names of list items (down_blocks_0, to_out_0) are diffusers' down_blocks.0, to_out.0.
LIST_ITEM = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|"
                       r"to_out)_(\d+)$")

# Runs under --torch_python: diffusers' DDIMPipeline on the folder; prints timings as JSON.
DIFFUSERS_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

folder, resolution, batch, steps, rounds = sys.argv[1], *map(int, sys.argv[2:6])
unet = UNet2DModel.from_pretrained(folder).eval()
pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
pipeline.set_progress_bar_config(disable=True)
x = torch.from_numpy(np.load(folder + "/probe.npy")).permute(0, 3, 1, 2)
with torch.no_grad():
  probe = unet(x, torch.tensor([10, 500])).sample.permute(0, 2, 3, 1).numpy()
np.save(folder + "/probe_out.npy", probe)
run = lambda: pipeline(batch_size=batch, num_inference_steps=steps, eta=0.0, output_type="np",
                       generator=torch.Generator().manual_seed(0))
start = time.perf_counter(); run(); first = time.perf_counter() - start
best = float("inf")
for _ in range(rounds):
  start = time.perf_counter(); run(); best = min(best, time.perf_counter() - start)
print(json.dumps({"seconds": best, "first": first, "threads": torch.get_num_threads(),
                  "version": __import__("diffusers").__version__}))
"""


def write_folder(folder: str, resolution: int, seed: int) -> None:
  """A random UNet2DModel folder with the CPU demo's layout (diffusers' names and layouts)."""
  config = diffusion_cpu_demo.get_config()
  config.data.resolution = resolution
  unet = unet_lib.from_config(config)
  shapes = jax.eval_shape(unet.init, jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)),
                          jnp.zeros((1,), jnp.int32))
  rng = np.random.default_rng(seed)
  tensors = {}
  for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
    module = [LIST_ITEM.sub(r"\1.\2", part) for part in path[:-1]]
    if path[-1] == "kernel":
      value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    else:
      value = (path[-1] == "scale") + 0.1 * rng.standard_normal(leaf.shape)
    name = "weight" if path[-1] in ("kernel", "scale") else path[-1]
    tensors[".".join(module + [name])] = np.ascontiguousarray(value, np.float32)
  safetensors.numpy.save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
  m = config.model
  with open(os.path.join(folder, "config.json"), "w") as handle:
    json.dump({"_class_name": "UNet2DModel", "sample_size": resolution,
               "block_out_channels": list(m.block_out_channels),
               "down_block_types": list(m.down_block_types),
               "up_block_types": list(m.up_block_types), "layers_per_block": m.layers_per_block,
               "attention_head_dim": m.attention_head_dim, "norm_num_groups": m.norm_num_groups,
               "flip_sin_to_cos": m.flip_sin_to_cos, "freq_shift": m.freq_shift}, handle)


def best_seconds(run, rounds: int) -> float:
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return best


def bench(resolution: int, batch: int, steps: int, rounds: int, torch_python: str | None) -> None:
  with tempfile.TemporaryDirectory() as folder:
    write_folder(folder, resolution, seed=resolution)
    unet, variables, info = import_diffusers.load_unet(folder)
    probe = np.random.default_rng(0).standard_normal((2, resolution, resolution, 3))
    np.save(os.path.join(folder, "probe.npy"), probe.astype(np.float32))
    sample = sampling.make_sampler(unet, variables, info["schedule"], sampler="ddim",
                                   num_steps=steps, resolution=resolution)
    indices = np.arange(batch)
    start = time.perf_counter()
    jax.block_until_ready(sample(indices, 0))
    first = time.perf_counter() - start
    gmia_s = best_seconds(lambda: sample(indices, 0), rounds)
    line = (f"{resolution} px, batch {batch}, {steps} DDIM steps: gmia {batch / gmia_s:.2f} "
            f"samples/s ({gmia_s:.2f} s; first call with compile {first:.1f} s)")
    python = torch_python or (sys.executable if importlib.util.find_spec("diffusers") else None)
    if python is None:
      print(line + "; diffusers not installed (--torch_python)")
      return
    out = subprocess.run([python, "-c", DIFFUSERS_SCRIPT, folder, str(resolution), str(batch),
                          str(steps), str(rounds)], check=True, capture_output=True, text=True)
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    ours = np.asarray(jax.jit(unet.apply)(variables, probe.astype(np.float32),
                                          jnp.array([10, 500])))
    theirs = np.load(os.path.join(folder, "probe_out.npy"))
    difference = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"{line}; diffusers {peer['version']} {batch / peer['seconds']:.2f} samples/s "
          f"({peer['seconds']:.2f} s, {peer['threads']} torch threads); gmia / diffusers = "
          f"{peer['seconds'] / gmia_s:.2f}x; outputs differ by {difference:.1e} of their scale")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--torch_python", default=None,
                      help="a Python with torch and diffusers (runs diffusers' pipeline)")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
  for resolution in args.resolutions:
    bench(resolution, args.batch, args.steps, args.rounds, args.torch_python)


if __name__ == "__main__":
  main()
