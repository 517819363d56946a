"""Identity attack throughput by stage, and its memory against the number of samples.

  python bench/bench_attack.py                 # gmia's tiny generator and demo encoder
  python bench/bench_attack.py --real          # + the gan-face-generate DCGAN as onnx:, YuNet
                                               #   detection and SFace (fetched by tests/assets)

Stages per chunk: generation (the source's samples), alignment + embedding (the face matcher
behind its alignment), and the attack kernels (evidence against the references), timed apart
after a compiling chunk; end to end samples/s; the peer is generation + embedding alone (what any
attack must pay anyway). Then peak resident memory of whole streamed attacks at 10^4 and 10^5
samples (gmia's tiny generator and encoder, the only pair fast enough for 10^5 on a CPU): it must
not grow with the number of samples, whose evidence is streamed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmia import parallel, sources  # noqa: E402
from gmia.attacks import identity_membership as im  # noqa: E402
from gmia.attacks.samples import make_sample_embedder  # noqa: E402
from gmia.checkpoint import Checkpointer  # noqa: E402
from gmia.data import run_data  # noqa: E402
from gmia.faces import embedder as embedder_lib, matchers  # noqa: E402
from gmia.face_encoder import trainer as encoder_trainer  # noqa: E402
from gmia.gan import train_step  # noqa: E402
from gmia.models import iresnet  # noqa: E402
from train.configs import face_encoder_cpu_demo, gan_tiny  # noqa: E402

_CHUNK = flags.DEFINE_integer("chunk_size", 256, "Samples per chunk.")
_CHUNKS = flags.DEFINE_integer("chunks", 4, "Timed chunks.")
_REFS = flags.DEFINE_integer("references", 1000, "Reference photos (200 identities x 5).")
_REAL = flags.DEFINE_bool("real", False, "Also the DCGAN + YuNet + SFace pipeline.")
_MEMORY = flags.DEFINE_string("memory", "10000,100000", "Sample counts of the memory runs.")
_ONE_RUN = flags.DEFINE_integer("memory_run", 0, "Internal: run one streamed attack, print RSS.")


def tiny_models(root: str) -> tuple[str, str]:
  """(generator, encoder workdir): freshly initialised gmia models, checkpointed as trained ones
  (throughput does not depend on training), the generator's workdir with the split of its
  tiny data set (prepared under root/data)."""
  gan_config = gan_tiny.get_config()
  gan_config.data.data_dir = os.path.join(root, "data")
  run_data.load_for_run(gan_config.data, os.path.join(root, "gan"))
  models = train_step.build_models(gan_config)
  state = jax.jit(lambda: train_step.init_state(gan_config, models))()
  checkpointer = Checkpointer(os.path.join(root, "gan"))
  checkpointer.save(1, state, {"kind": "gan", "config": json.loads(gan_config.to_json())})
  checkpointer.close()
  enc_config = face_encoder_cpu_demo.get_config()
  encoder = iresnet.from_config(enc_config.model)
  e_state = encoder_trainer.init_state(encoder, encoder_trainer.make_optimizer(enc_config),
                                       enc_config.model.input_size, 8, jax.random.key(0))
  checkpointer = Checkpointer(os.path.join(root, "encoder"))
  checkpointer.save(1, e_state, {"kind": "face_encoder", "num_centres": 8,
                                 "config": json.loads(enc_config.to_json())})
  checkpointer.close()
  return f"gmia:{os.path.join(root, 'gan')}", os.path.join(root, "encoder")


def pipeline(config: ml_collections.ConfigDict):
  """(source, embedder, references, mesh) of a config with random reference embeddings."""
  mesh = parallel.make_mesh()
  source = sources.open_source(config)
  embedder = embedder_lib.load_embedder(config)
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (_REFS.value, embedder.size, embedder.size, 3)).astype(np.uint8)
  embeddings = matchers.embed_crops(embedder.matcher, crops, mesh)
  person = np.repeat(np.arange(_REFS.value // 5), 5)
  groups = {str(i): "member" if i % 2 else "population" for i in range(_REFS.value // 5)}
  return source, embedder, im.make_references(embeddings, person, np.arange(_REFS.value),
                                              groups), mesh


def stages(name: str, config: ml_collections.ConfigDict) -> None:
  """Prints seconds per stage and samples/s of `_CHUNKS` chunks after a compiling one."""
  source, embedder, refs, mesh = pipeline(config)
  params = jax.device_put(embedder.params, parallel.replicated(mesh))
  embed = embedder_lib.jitted_embed(embedder)
  evidence = im.Evidence.empty(refs.num_identities, 10, len(refs.identity))
  times = {"generate": 0.0, "align + embed": 0.0, "kernels": 0.0}
  for chunk in range(_CHUNKS.value + 1):
    indices = np.arange(chunk * _CHUNK.value, (chunk + 1) * _CHUNK.value)
    started = time.perf_counter()
    images = jax.block_until_ready(jax.device_put(source.sample(indices, mesh),
                                                  parallel.data_sharding(mesh)))
    generated = time.perf_counter()
    embeddings, _ = jax.block_until_ready(embed(params, (images + 1.0) * 127.5))
    embedded = time.perf_counter()
    evidence, _ = im.observe(evidence, indices, np.asarray(embeddings), refs, threshold=0.5,
                             mesh=mesh)
    if chunk:  # The first chunk compiles.
      times["generate"] += generated - started
      times["align + embed"] += embedded - generated
      times["kernels"] += time.perf_counter() - embedded
  samples = _CHUNKS.value * _CHUNK.value
  total = sum(times.values())
  print(f"{name}: {source.resolution} px, {embedder.matcher.name.split('/')[-1]}, "
        f"align={embedder.align}, {_REFS.value} references, {jax.device_count()} device(s), "
        f"chunk {_CHUNK.value}")
  for stage, seconds in times.items():
    print(f"  {stage:14s} {samples / seconds:9.1f} samples/s ({100 * seconds / total:4.1f}%)")
  peer = times["generate"] + times["align + embed"]
  print(f"  end to end     {samples / total:9.1f} samples/s; ratio to generate + embed alone "
        f"{peer / total:.2f}")


def memory_run(config: ml_collections.ConfigDict, num_samples: int) -> None:
  """One whole streamed attack (as membership streams it); prints the peak RSS in MB."""
  source, embedder, refs, mesh = pipeline(config)
  samples = make_sample_embedder(source, embedder, mesh, _CHUNK.value)
  with tempfile.TemporaryDirectory() as state:
    evidence, view = im.stream(samples.embed, num_samples, _CHUNK.value, refs, threshold=0.5,
                               k=10, state_dir=state, fingerprint={})
  assert int(evidence.num_samples) == num_samples == len(view.sample)
  print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def tiny_config(root: str) -> ml_collections.ConfigDict:
  generator, encoder = tiny_models(root)
  config = ml_collections.ConfigDict({**sources.config_fields(),
                                      **embedder_lib.config_fields()})
  config.generator = generator
  config.matcher.path = encoder
  return config


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as root:
    config = tiny_config(root)
    if _ONE_RUN.value:
      memory_run(config, _ONE_RUN.value)
      return
    stages("gmia tiny generator + demo encoder", config)
    if _REAL.value:
      from tests import assets, dcgan
      real = ml_collections.ConfigDict(config.to_dict())
      real.update(generator=f"onnx:{dcgan.onnx_path(root)}", align="detect",
                  detector_onnx=assets.yunet_path(), detect_score=0.6, sample_detector_size=160)
      real.matcher.update(path=assets.sface_path(), preset="sface")
      stages("gan-face-generate DCGAN (onnx:) + YuNet + SFace", real)
  for count in (int(n) for n in _MEMORY.value.split(",") if n):
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, f"--memory_run={count}",
                          f"--chunk_size={_CHUNK.value}", f"--references={_REFS.value}"],
                         capture_output=True, text=True, check=True).stdout.split()
    print(f"streamed attack of {count:>7} samples: peak RSS {float(out[-1]):7.0f} MB "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  app.run(main)
