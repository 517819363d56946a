"""End-to-end identity attack throughput: samples/s through generator + encoder + kernels.

  python bench/bench_attack.py [--gan_config=train/configs/gan_tiny.py] [--chunk_size=500]

Models are randomly initialised at the sizes of the given configs (throughput does not depend on
training). Prints the seconds per chunk of each stage, the end-to-end samples/s, and the share of
time spent in the kernels, against the same chunk through generation + embedding alone (the peer:
what any attack must pay anyway).
"""

from __future__ import annotations

import importlib.util
import time

import jax
import numpy as np
from absl import app, flags

from gmia import parallel
from gmia.attacks import generate_embed
from gmia.attacks import identity_membership as im
from gmia.face_encoder import embed as encoder_embed, trainer as encoder_trainer
from gmia.gan import train_step

_GAN = flags.DEFINE_string("gan_config", "train/configs/gan_tiny.py", "Generator config file.")
_ENCODER = flags.DEFINE_string("encoder_config", "train/configs/face_encoder_cpu_demo.py",
                               "Encoder config file.")
_CHUNK = flags.DEFINE_integer("chunk_size", 500, "Samples per chunk.")
_CHUNKS = flags.DEFINE_integer("chunks", 5, "Timed chunks.")
_REFS = flags.DEFINE_integer("references", 1000, "Reference photos (200 identities x 5).")


def _config(path):
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(_):
  mesh = parallel.make_mesh()
  gan_config = _config(_GAN.value)
  models = train_step.build_models(gan_config)
  state = train_step.init_state(gan_config, models)
  g_vars = {"params": state["g_ema"], "buffers": state["g_buffers"]}
  enc_config = _config(_ENCODER.value)
  encoder = encoder_trainer.create_model(enc_config.model)
  e_state = encoder_trainer.init_state(encoder, encoder_trainer.make_optimizer(enc_config),
                                       enc_config.model.input_size, 8, jax.random.key(0))
  e_vars = {"params": e_state["params"]["backbone"], "batch_stats": e_state["batch_stats"]}
  chunk_fn = generate_embed.make_generate_embed(models.generator, g_vars, encoder, e_vars, seed=0,
                                                chunk_size=_CHUNK.value, mesh=mesh)
  rng = np.random.default_rng(0)
  ref_images = rng.integers(0, 256, (_REFS.value, gan_config.data.resolution,
                                     gan_config.data.resolution, 3), dtype=np.uint8)
  ref_embeddings = np.asarray(jax.jit(encoder_embed.embed, static_argnums=0)(
      encoder, e_vars, ref_images))
  identity = np.repeat(np.arange(_REFS.value // 5), 5)
  refs = im.make_references(ref_embeddings, identity, np.arange(_REFS.value),
                            np.arange(_REFS.value // 10), np.arange(_REFS.value // 10,
                                                                     _REFS.value // 5))
  evidence = im.Evidence.empty(refs.num_identities, 10)

  started = time.perf_counter()
  _, embeddings = chunk_fn(0)
  evidence, _ = im.observe(evidence, embeddings, refs, threshold=0.5, mesh=mesh)
  print(f"compile + first chunk: {time.perf_counter() - started:.1f} s")
  generate_time = kernel_time = 0.0
  for chunk in range(1, _CHUNKS.value + 1):
    started = time.perf_counter()
    _, embeddings = chunk_fn(chunk)
    generate_time += time.perf_counter() - started
    started = time.perf_counter()
    evidence, _ = im.observe(evidence, embeddings, refs, threshold=0.5, mesh=mesh)
    kernel_time += time.perf_counter() - started
  samples = _CHUNKS.value * _CHUNK.value
  total = generate_time + kernel_time
  print(f"{gan_config.data.resolution} px generator, {_REFS.value} references, "
        f"{jax.device_count()} device(s), chunk {_CHUNK.value}")
  print(f"generate + embed : {samples / generate_time:8.1f} samples/s")
  print(f"attack kernels   : {samples / kernel_time:8.1f} samples/s")
  print(f"end to end       : {samples / total:8.1f} samples/s "
        f"(kernels take {100 * kernel_time / total:.1f}% of the time; ratio to generate+embed "
        f"alone {generate_time / total:.2f})")


if __name__ == "__main__":
  app.run(main)
