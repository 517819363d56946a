"""Imported NVIDIA StyleGAN2 generators: images/s and compile time, against NVIDIA's own code.

    python bench/bench_stylegan2_import.py                      # 256 and 1024 px, batch 8
    python bench/bench_stylegan2_import.py --resolutions 256 --batch 8 \
        --nvidia_repo ~/stylegan2-ada-pytorch --torch_python ~/venvs/torch/bin/python

Networks have NVIDIA's FFHQ shapes (z = w = 512, 8 mapping layers, channel_base 32768,
channel_max 512, conv_clamp 256, num_fp16_res 4) and random weights (noise strengths drawn so
that the noise inputs count). With `--nvidia_repo` (a stylegan2-ada-pytorch work tree) and
`--torch_python` (a Python with torch; NVIDIA's code is on no registry), NVIDIA's
`training.networks.Generator` builds them and pickles G, D and G_ema as its training loop does;
gmia reads that pickle and both time `G_ema(z, c=None, noise_mode='const')` on the same latents in
this run: NVIDIA on torch's CPU path with force_fp32=True (its fp16 layers are a GPU feature),
gmia jitted, each the fastest of `--rounds` rounds. The output difference is reported too.
Without torch, the gmia generator is built directly with the same shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia.gan import sampling  # noqa: E402
from gmia.models import import_stylegan2, stylegan  # noqa: E402

FFHQ = dict(z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512,
            conv_clamp=256.0)

# Runs under --torch_python in --nvidia_repo: builds, pickles and times NVIDIA's generator.
NVIDIA_SCRIPT = r"""
import copy, json, pickle, sys, time
import numpy as np, torch
import dnnlib
from training import networks
res, batch, rounds, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
kw = dict(c_dim=0, img_resolution=res, img_channels=3)
G = networks.Generator(z_dim=512, w_dim=512, mapping_kwargs=dnnlib.EasyDict(num_layers=8),
    synthesis_kwargs=dnnlib.EasyDict(channel_base=32768, channel_max=512, num_fp16_res=4,
                                     conv_clamp=256), **kw)
D = networks.Discriminator(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
                           **kw)
with torch.no_grad():
    for name, p in G.named_parameters():
        if name.endswith('noise_strength'):
            p.copy_(torch.rand([]) * 0.2)
snapshot = {'training_set_kwargs': {}, 'augment_pipe': None}
for key, module in [('G', G), ('D', D), ('G_ema', G)]:
    snapshot[key] = copy.deepcopy(module).eval().requires_grad_(False).cpu()
with open(out + '.pkl', 'wb') as f:
    pickle.dump(snapshot, f)
z = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32))
g = snapshot['G_ema']
times = []
with torch.no_grad():
    for _ in range(rounds + 1):
        start = time.perf_counter()
        img = g(z, None, noise_mode='const', force_fp32=True)
        times.append(time.perf_counter() - start)
np.savez(out + '.npz', z=z.numpy(), img=img[:2].numpy().transpose(0, 2, 3, 1))
print(json.dumps({'first_s': times[0], 'best_s': min(times[1:]),
                  'threads': torch.get_num_threads()}))
"""


def nvidia_pickle_and_timing(args, resolution: int, stem: str) -> dict:
  """Builds the pickle `stem`.pkl with NVIDIA's code and times it; {} without torch."""
  if not (args.nvidia_repo and args.torch_python):
    return {}
  print(f"  {resolution} px: NVIDIA builds, pickles and runs its generator ...", flush=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
      args.nvidia_repo, args.extra_pythonpath, os.environ.get("PYTHONPATH")])))
  done = subprocess.run([args.torch_python, "-c", NVIDIA_SCRIPT, str(resolution),
                         str(args.batch), str(args.rounds), stem], cwd=args.nvidia_repo, env=env,
                        capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f"NVIDIA's code failed: {done.stderr.strip().splitlines()[-1]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def gmia_generator(resolution: int, stem: str, nvidia: dict):
  """(generator, g_vars, seconds to read and import the pickle or None)."""
  if nvidia:
    start = time.perf_counter()
    generator, g_vars, _ = import_stylegan2.load_generator(stem + ".pkl")
    return generator, g_vars, time.perf_counter() - start
  generator = stylegan.Generator(img_resolution=resolution, **FFHQ)
  init = lambda: generator.init({"params": jax.random.key(0), "noise": jax.random.key(1)},
                                jax.numpy.zeros((1, 512)))
  return generator, jax.jit(init).lower().compile({"xla_backend_optimization_level": 0})(), None


def bench(args, resolution: int, tmp: str) -> dict:
  stem = os.path.join(tmp, f"ffhq{resolution}")
  nvidia = nvidia_pickle_and_timing(args, resolution, stem)
  generator, g_vars, import_s = gmia_generator(resolution, stem, nvidia)
  z = (np.load(stem + ".npz")["z"] if nvidia
       else np.random.default_rng(0).standard_normal((args.batch, 512)).astype(np.float32))
  key = jax.random.key(0)
  print(f"  {resolution} px: gmia compiles and runs the imported generator ...", flush=True)
  start = time.perf_counter()
  sample = sampling.make_sampler(generator).lower(g_vars, z, key).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    images = jax.block_until_ready(sample(g_vars, z, key))
    times.append(time.perf_counter() - start)
  row = {"resolution": resolution, "batch": args.batch, "import_s": import_s,
         "compile_s": compile_s, "gmia_images_per_s": args.batch / min(times)}
  if nvidia:
    reference = np.load(stem + ".npz")["img"]
    row.update(nvidia_images_per_s=args.batch / nvidia["best_s"],
               nvidia_first_call_s=nvidia["first_s"], torch_threads=nvidia["threads"],
               max_abs_diff=float(np.abs(np.asarray(images[:2]) - reference).max()),
               output_abs_max=float(np.abs(reference).max()))
    row["gmia_over_nvidia"] = row["gmia_images_per_s"] / row["nvidia_images_per_s"]
    row["pickle_mb"] = os.path.getsize(stem + ".pkl") / 2 ** 20
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--nvidia_repo", default=os.environ.get("STYLEGAN2_ADA_PYTORCH"),
                      help="stylegan2-ada-pytorch work tree (default $STYLEGAN2_ADA_PYTORCH)")
  parser.add_argument("--torch_python", default=os.environ.get("TORCH_PYTHON"),
                      help="Python interpreter with torch (default $TORCH_PYTHON)")
  parser.add_argument("--extra_pythonpath", default="",
                      help="more paths for NVIDIA's imports (e.g. a stub of `requests`)")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
        f"NVIDIA peer: {'yes' if args.nvidia_repo and args.torch_python else 'no'}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    for resolution in args.resolutions:
      row = bench(args, resolution, tmp)
      print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                        for k, v in row.items()}), flush=True)


if __name__ == "__main__":
  main()
