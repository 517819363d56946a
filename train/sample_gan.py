r"""Samples images from a trained generator: a PNG grid or an .npz of uint8 images.

  python -m train.sample_gan --workdir=/tmp/gan_demo --num=64 --out=/tmp/samples.png
  python -m train.sample_gan --workdir=/tmp/gan_demo --num=10000 --seed=1 --truncation=0.7 \
      --out=/tmp/samples.npz
  python -m train.sample_gan --generator=stylegan2_pkl:ffhq.pkl --num=16 --out=/tmp/ffhq.png

--generator=stylegan2_pkl:FILE reads an NVIDIA stylegan2-ada-pytorch pickle (G_ema, or G with
--raw) without running code from it; a conditional one needs --class_idx.

The .npz holds `images` (u8[N, R, R, 3]) and `z` (f32[N, z_dim]).
"""

import os

import numpy as np
from absl import app, flags, logging

from gmia import viz
from gmia.gan import sampling
from gmia.models import import_stylegan2

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_GENERATOR = flags.DEFINE_string("generator", None,
                                 "Instead of --workdir: gmia:WORKDIR or stylegan2_pkl:FILE.")
_CLASS = flags.DEFINE_integer("class_idx", None, "Class of a conditional stylegan2_pkl generator.")
_OUT = flags.DEFINE_string("out", None, "Output path ending in .png (grid) or .npz.")
_NUM = flags.DEFINE_integer("num", 64, "Number of images.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the latents (and of random noise).")
_TRUNCATION = flags.DEFINE_float("truncation", 1.0, "Truncation psi: 1 = none, 0 = w_avg.")
_CUTOFF = flags.DEFINE_integer("truncation_cutoff", None, "Truncate only the first ws.")
_NOISE = flags.DEFINE_enum("noise_mode", "const", ["const", "random", "none"], "Noise inputs.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_RAW = flags.DEFINE_bool("raw", False, "Use the raw generator weights instead of the EMA.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per generator call.")
flags.mark_flags_as_required(["out"])
flags.mark_flags_as_mutual_exclusive(["workdir", "generator"], required=True)


def _load(spec: str):
  """(generator, g_vars, config) of a gmia workdir or a `KIND:PATH` generator source."""
  kind, _, path = spec.partition(":")
  if kind == "stylegan2_pkl" and path:
    generator, g_vars, info = import_stylegan2.load_generator(path, use_ema=not _RAW.value,
                                                              class_idx=_CLASS.value)
    if generator.c_dim:
      raise app.UsageError(f"{path} is conditional (c_dim={generator.c_dim}): pass --class_idx")
    return generator, g_vars, info
  if kind == "gmia" and path:
    return sampling.load_generator(path, _STEP.value, use_ema=not _RAW.value)
  raise app.UsageError(f"--generator must be gmia:WORKDIR or stylegan2_pkl:FILE, got {spec!r}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _OUT.value.endswith((".png", ".npz")):
    raise app.UsageError(f"--out must end in .png or .npz, got {_OUT.value}")
  generator, g_vars, _ = _load(_GENERATOR.value or f"gmia:{_WORKDIR.value}")
  images = sampling.generate(generator, g_vars, seed=_SEED.value, num=_NUM.value,
                             batch_size=_BATCH.value, truncation_psi=_TRUNCATION.value,
                             truncation_cutoff=_CUTOFF.value, noise_mode=_NOISE.value)
  images = viz.to_uint8(images)
  if _OUT.value.endswith(".png"):
    viz.save_grid(_OUT.value, images, ncols=int(np.ceil(np.sqrt(len(images)))))
  else:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    np.savez(_OUT.value, images=images,
             z=np.asarray(sampling.latents(_SEED.value, _NUM.value, generator.z_dim)))
  logging.info("wrote %d images to %s", len(images), _OUT.value)


if __name__ == "__main__":
  app.run(main)
