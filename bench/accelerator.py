"""gmia on one GPU in one call: kernels, StyleGAN2, face networks and the attack beside their peers.

On a machine with one NVIDIA GPU whose image holds JAX (CUDA), flax, optax, orbax, onnx,
onnxruntime and torch, after `bash bench/prepare_accelerator.sh` here (wheels the image lacks,
NVIDIA's stylegan2-ada-pytorch and the ONNX files, all under ignored folders of bench/):

    bash bench/accelerator.sh --json accelerator.json --log accelerator.log

carrying bench/.wheels, bench/.peers and bench/.assets (21 MiB). As one call of this workplace's
device tool: command `set -o pipefail; bash bench/accelerator.sh --json $OUT/accelerator.json
--log $OUT/accelerator.log 2>&1 | tee $OUT/accelerator.txt`, carry ["bench/.wheels",
"bench/.peers", "bench/.assets"], timeout_s 600: the run stops starting sections at
--deadline_s (450 s) and cuts each section to its budget within it, keeping 40 s for each one
still to come. `--sections kernel,faces` reruns a part. `--toy` runs every section at tiny sizes
on a CPU (tests/test_accelerator_bench.py): 95-135 s, 25-31 s of CPU time, on the 2 development
cores under a load of 16-18.

Each section runs in its own process, so a failing or hanging peer costs only its own lines
(printed with a one-line reason), and the attack's peak device memory is the attack's alone:
  header    the GPU, JAX's version and device count, the peers' versions.
  kernel    gmia.kernels.top_k (queries x references x D, k = 10) in TFLOP/s of its matmul
            work, bfloat16 and float32, against a plain jnp.dot of two square matrices at the
            same precision (bf16 products, f32 accumulation; f32 at Precision.HIGHEST, as the
            kernel), measured in the same process. Goal: >= 70% of the matmul rate.
  stylegan  StyleGAN2 images/s at 256 px (NVIDIA's paper256 config: channel_base 16384) and 1024
            px (FFHQ: 32768), z = w = 512, 8 mapping layers, channel_max 512, conv_clamp 256,
            random weights. NVIDIA's networks.py (torch, same GPU) builds each network, pickles
            it and times `G(z, None, noise_mode='const', force_fp32=True)`; its CUDA ops are
            compiled in the background while the first sections run, and where they fail to
            build its reference ops run (the line says which). gmia imports the pickle
            (gmia.models.import_stylegan2) and times its jitted sampler on the same z and batch,
            so the outputs are compared too. Both in strict float32 (no TF32: torch's allow_tf32
            off, JAX's default matmul precision highest). Goal: gmia >= 1.0x.
  faces     SFace (batch of crops) and YuNet (640 px photos: detect_faces with decoding and NMS,
            and the network alone) through gmia.faces against onnxruntime on the same inputs,
            its CUDA provider where the installed onnxruntime has one (inputs placed on the
            device), else its CPU provider, said so.
  attack    the membership attack end to end at 256 px (gmia.attacks.identity_membership.stream
            over make_sample_embedder): NVIDIA's 256 px pickle imported as `stylegan2_pkl:`
            (a random gmia StyleGAN2 of the same shapes stands in where NVIDIA's code failed),
            YuNet alignment at the size the attack picks for the samples (gmia.faces.embedder),
            SFace, random reference embeddings, the default chunk of 500; samples/s
            after a compiling chunk, and peak device memory (memory_stats; peak host RSS where
            the device has none). Random networks draw no faces, so the detection thresholds
            are off and every sample counts as a face: every stage sees every sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

NVIDIA_REPO = os.path.join(BENCH, ".peers", "stylegan2-ada-pytorch")
ASSETS = os.path.join(BENCH, ".assets")
RECORD = "@record "
SECTIONS = ("header", "kernel", "stylegan", "faces", "attack")
MIB = 2.0 ** 20


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What each section runs. resolutions / channel_bases / batches: the "256" and "1024" px
  StyleGAN2 (the attack runs at the first); attack_photos reference photos of attack_people."""
  matmul: int
  queries: int
  refs: int
  dim: int
  chunks: tuple[int, ...]
  resolutions: tuple[int, int]
  channel_bases: tuple[int, int]
  channel_max: int
  latent: int
  mapping_layers: int
  batches: tuple[int, int]
  sface_batch: int
  yunet_batch: int
  attack_chunk: int
  attack_samples: int
  attack_photos: int
  attack_people: int
  rounds: int
  # Seconds each section may take (cut to what is left of the run's deadline).
  budgets: dict[str, float]


FULL = Sizes(matmul=8192, queries=65536, refs=65536, dim=512, chunks=(1024, 4096),
             resolutions=(256, 1024), channel_bases=(16384, 32768), channel_max=512, latent=512,
             mapping_layers=8, batches=(32, 8), sface_batch=256, yunet_batch=32,
             attack_chunk=500, attack_samples=5000, attack_photos=10000, attack_people=2000,
             rounds=5, budgets={"header": 60, "kernel": 120, "nvidia": 210, "stylegan": 180,
                                "faces": 150, "attack": 180})
TOY = Sizes(matmul=256, queries=2048, refs=2048, dim=64, chunks=(512,), resolutions=(32, 64),
            channel_bases=(512, 1024), channel_max=32, latent=32, mapping_layers=2,
            batches=(4, 2), sface_batch=4, yunet_batch=2, attack_chunk=8, attack_samples=16,
            attack_photos=64, attack_people=16, rounds=2,
            budgets={"header": 120, "kernel": 120, "nvidia": 240, "stylegan": 240,
                     "faces": 240, "attack": 240})
RESERVE_S = 40.0
TOP_K = 10
CONV_CLAMP = 256.0


# ------------------------------------------------------------------------------------------------
# Shared by the sections' processes (stdlib and numpy only: the NVIDIA section may run under a
# Python that has torch but not JAX).


def emit(kind: str, **fields: Any) -> None:
  """One result for the parent process: a line of JSON after RECORD."""
  print(RECORD + json.dumps({"kind": kind, **fields}, allow_nan=False), flush=True)


def timed(call: Callable[[], Any], sync: Callable[[Any], Any], rounds: int,
          round_s: float = 0.25) -> tuple[float, float]:
  """(seconds of the first call, compilation included; best seconds per call).

  Calls run back to back in rounds of about `round_s` seconds, synchronised once per round
  (`sync` waits for a result), so a device's queue stays full as in a real loop; the fastest
  round counts, which evens out other load.
  """
  start = time.perf_counter()
  sync(call())
  first = time.perf_counter() - start
  start = time.perf_counter()
  sync(call())
  best = time.perf_counter() - start
  repeats = max(1, min(50, math.ceil(round_s / max(best, 1e-6))))
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(repeats):
      out = call()
    sync(out)
    best = min(best, (time.perf_counter() - start) / repeats)
  return first, best


def latents(batch: int, dim: int) -> np.ndarray:
  """f32[batch, dim] ~ N(0, 1): the z both StyleGAN2 implementations get."""
  return np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)


def pickle_stem(workdir: str, resolution: int) -> str:
  return os.path.join(workdir, f"nvidia{resolution}")


# ------------------------------------------------------------------------------------------------
# Sections run in child processes: each prints records.


def section_header(args, sizes: Sizes) -> None:
  import importlib.metadata as metadata
  import jax
  import onnxruntime

  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None

  smi = None
  if shutil.which("nvidia-smi"):
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True)
    smi = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None
  device = jax.devices()[0]
  emit("header", device_kind=device.device_kind, platform=device.platform,
       devices=jax.device_count(), jax=jax.__version__, jaxlib=version("jaxlib"),
       flax=version("flax"), optax=version("optax"), orbax=version("orbax-checkpoint"),
       onnx=version("onnx"), onnxruntime=onnxruntime.__version__,
       ort_providers=onnxruntime.get_available_providers(), torch=version("torch"),
       python=sys.version.split()[0], cpus=os.cpu_count(), nvidia_smi=smi)


def section_kernel(args, sizes: Sizes) -> None:
  import jax
  import jax.numpy as jnp
  from gmia import kernels

  keys = jax.random.split(jax.random.key(0), 4)
  unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)

  def matmul_seconds(dtype, precision) -> float:
    a = jax.random.normal(keys[0], (sizes.matmul,) * 2, dtype)
    b = jax.random.normal(keys[1], (sizes.matmul,) * 2, dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision=precision,
                                       preferred_element_type=jnp.float32))
    return timed(lambda: dot(a, b), jax.block_until_ready, sizes.rounds)[1]

  for dtype, name in ((jnp.bfloat16, "bf16"), (jnp.float32, "f32")):
    # The kernel's own precision for each input type: bf16 products, and full f32 products (no
    # tf32 rounding) for f32 inputs; both accumulate in f32.
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    seconds = matmul_seconds(dtype, precision)
    emit("matmul", dtype=name, precision=precision.name, n=sizes.matmul,
         tflops=2.0 * sizes.matmul ** 3 / seconds / 1e12)
    queries = unit(jax.random.normal(keys[2], (sizes.queries, sizes.dim))).astype(dtype)
    refs = unit(jax.random.normal(keys[3], (sizes.refs, sizes.dim))).astype(dtype)
    for chunk in sizes.chunks:
      search = jax.jit(lambda q, r, chunk=chunk: kernels.top_k(q, r, TOP_K, chunk_size=chunk))
      first, seconds = timed(lambda: search(queries, refs), jax.block_until_ready, sizes.rounds)
      emit("topk", dtype=name, queries=sizes.queries, refs=sizes.refs, dim=sizes.dim, k=TOP_K,
           chunk=chunk, compile_s=first - seconds, seconds=seconds,
           tflops=2.0 * sizes.queries * sizes.refs * sizes.dim / seconds / 1e12)


def _no_distutils_needed() -> None:
  """NVIDIA's dnnlib imports distutils.util.strtobool, which Python 3.12 no longer ships."""
  import importlib.util
  import types
  if importlib.util.find_spec("distutils") is None:
    util = types.ModuleType("distutils.util")
    util.strtobool = lambda value: int(str(value).lower() in ("y", "yes", "t", "true", "on", "1"))
    sys.modules.update({"distutils": types.ModuleType("distutils"), "distutils.util": util})


def section_nvidia_build(args, sizes: Sizes) -> None:
  """Compiles NVIDIA's CUDA ops (bias_act, upfirdn2d) into torch's extension cache."""
  sys.path.insert(0, args.nvidia_repo)
  _no_distutils_needed()
  import torch
  from torch_utils.ops import bias_act, upfirdn2d
  if not torch.cuda.is_available():
    emit("nvidia_build", ok=False, seconds=0.0, reason="no CUDA device: reference ops")
    return
  start = time.perf_counter()
  ok = bias_act._init() and upfirdn2d._init()
  emit("nvidia_build", ok=bool(ok), seconds=time.perf_counter() - start,
       reason=None if ok else "NVIDIA's CUDA ops failed to build (their warning is above)")


def section_nvidia(args, sizes: Sizes) -> None:
  """NVIDIA's generators: built, pickled for gmia, timed."""
  sys.path.insert(0, args.nvidia_repo)
  _no_distutils_needed()
  import copy
  import pickle

  import torch
  from torch_utils.ops import bias_act, upfirdn2d
  from training import networks

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cudnn.benchmark = True  # As NVIDIA's training loop sets it.
  if args.nvidia_ops == "ref" or device.type == "cpu":
    # An op whose plugin is marked as tried and absent runs its reference implementation.
    for op in (bias_act, upfirdn2d):
      op._inited, op._plugin = True, None
  sync = (lambda out: torch.cuda.synchronize()) if device.type == "cuda" else (lambda out: out)
  for resolution, channel_base, batch in zip(sizes.resolutions, sizes.channel_bases,
                                             sizes.batches):
    torch.manual_seed(0)
    G = networks.Generator(
        z_dim=sizes.latent, w_dim=sizes.latent, c_dim=0, img_resolution=resolution,
        img_channels=3, mapping_kwargs={"num_layers": sizes.mapping_layers},
        synthesis_kwargs={"channel_base": channel_base, "channel_max": sizes.channel_max,
                          "num_fp16_res": 4, "conv_clamp": CONV_CLAMP})
    with torch.no_grad():  # Noise strengths start at 0; these make the noise inputs count.
      for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
          p.copy_(torch.rand([]) * 0.2)
    G = G.eval().requires_grad_(False)
    stem = pickle_stem(args.workdir, resolution)
    with open(stem + ".pkl", "wb") as f:
      pickle.dump({"G_ema": copy.deepcopy(G).cpu(), "training_set_kwargs": {}}, f)
    G = G.to(device)
    z = torch.from_numpy(latents(batch, sizes.latent)).to(device)
    with torch.no_grad():
      generate = lambda: G(z, None, noise_mode="const", force_fp32=True)
      first, seconds = timed(generate, sync, sizes.rounds)
      images = generate()[:2].permute(0, 2, 3, 1).cpu().numpy()
    np.save(stem + ".npy", images)
    cuda_ops = bias_act._plugin is not None and upfirdn2d._plugin is not None
    emit("nvidia", resolution=resolution, batch=batch, channel_base=channel_base,
         images_per_s=batch / seconds, first_call_s=first, device=str(device),
         ops="CUDA ops" if cuda_ops else "reference ops (impl='ref')", torch=torch.__version__)


def section_stylegan(args, sizes: Sizes) -> None:
  """gmia's generators: NVIDIA's pickles imported (random ones of the same shapes where there
  are none), timed in strict float32 on the same z."""
  import jax
  import jax.numpy as jnp
  from gmia.gan import sampling
  from gmia.models import import_stylegan2, stylegan

  jax.config.update("jax_default_matmul_precision", "highest")
  generators = {}

  def generator_at(resolution: int, channel_base: int):
    """(generator, g_vars on the device, where the weights come from), made once."""
    if resolution not in generators:
      stem = pickle_stem(args.workdir, resolution)
      if os.path.exists(stem + ".npy"):
        generator, g_vars, _ = import_stylegan2.load_generator(stem + ".pkl")
        weights = "NVIDIA's, imported"
      else:
        generator = stylegan.Generator(
            z_dim=sizes.latent, w_dim=sizes.latent, img_resolution=resolution,
            mapping_layers=sizes.mapping_layers, channel_base=channel_base,
            channel_max=sizes.channel_max, conv_clamp=CONV_CLAMP)
        g_vars = jax.jit(lambda: generator.init({"params": jax.random.key(0),
                                                 "noise": jax.random.key(1)},
                                                jnp.zeros((1, sizes.latent))))()
        weights = "random gmia"
      generators[resolution] = (generator, jax.device_put(g_vars), weights)
    return generators[resolution]

  # The default (batched) modulation at both sizes, then the fused one (one grouped convolution,
  # NVIDIA's inference path) at the smaller only, one compilation fewer within the deadline.
  shapes = list(zip(sizes.resolutions, sizes.channel_bases, sizes.batches))
  runs = [("batched", shape) for shape in shapes] + [("fused", shapes[0])]
  for variant, (resolution, channel_base, batch) in runs:
    generator, g_vars, weights = generator_at(resolution, channel_base)
    sample = sampling.make_sampler(generator.clone(fused_modconv=variant == "fused"))
    z, key = jax.device_put(latents(batch, sizes.latent)), jax.random.key(0)
    first, seconds = timed(lambda: sample(g_vars, z, key), jax.block_until_ready,
                           sizes.rounds)
    record = dict(resolution=resolution, batch=batch, variant=variant, weights=weights,
                  images_per_s=batch / seconds, compile_s=first - seconds)
    reference_path = pickle_stem(args.workdir, resolution) + ".npy"
    if os.path.exists(reference_path):
      reference = np.load(reference_path)
      images = np.asarray(sample(g_vars, z, key)[:len(reference)])
      record.update(max_abs_diff=float(np.abs(images - reference).max()),
                    output_abs_max=float(np.abs(reference).max()))
    emit("stylegan", **record)


def _ort_call(session, feeds: dict[str, np.ndarray], device: str) -> Callable[[], Any]:
  """One run of `session` on inputs already on `device` ("cuda" or "cpu"), so that no copy of
  the inputs to the GPU is timed beside gmia's device-resident arrays. The outputs, 0.1-1% of
  the inputs' bytes, come back to the host: outputs bound on the device are checked against
  the graph's declared batch of 1, which tests/assets.py's free batch leaves on SFace's."""
  import onnxruntime
  values = {name: onnxruntime.OrtValue.ortvalue_from_numpy(x, device, 0)
            for name, x in feeds.items()}
  return lambda: session.run_with_ort_values(None, values)


def _ort_session(path: str, free_batch: bool):
  """(session, device, provider): onnxruntime's CUDA provider where this onnxruntime has one."""
  import onnxruntime
  from tests import assets
  session = assets.onnxruntime_session(path, free_batch=free_batch)
  if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
    session.set_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
  if session.get_providers()[0] == "CUDAExecutionProvider":
    return session, "cuda", "CUDA provider"
  return session, "cpu", f"CPU provider, {os.cpu_count()} cores"


def asset_paths(args) -> tuple[str, str]:
  """(SFace, YuNet) ONNX files: the flags, else tests/assets.py's cache."""
  if args.sface and args.yunet:
    return args.sface, args.yunet
  from tests import assets
  return args.sface or assets.sface_path(), args.yunet or assets.yunet_path()


def section_faces(args, sizes: Sizes) -> None:
  import jax
  from gmia.faces import detect, matchers
  from gmia.models.preprocessing import PRESETS

  sface_path, yunet_path = asset_paths(args)
  on_cpu = jax.default_backend() == "cpu"
  rng = np.random.default_rng(0)

  # SFace reads RGB crops in 0..255 as they are (its preset), NCHW; gmia's matcher takes NHWC.
  matcher = matchers.onnx_matcher(sface_path, PRESETS["sface"])
  crops = rng.uniform(0, 255, (sizes.sface_batch, 112, 112, 3)).astype(np.float32)
  embed = jax.jit(matcher.embed)
  params, device_crops = jax.device_put(matcher.params), jax.device_put(crops)
  first, seconds = timed(lambda: embed(params, device_crops), jax.block_until_ready,
                         sizes.rounds)
  session, device, provider = _ort_session(sface_path, free_batch=True)
  peer = _ort_call(session, {"data": np.ascontiguousarray(crops.transpose(0, 3, 1, 2))}, device)
  _, peer_seconds = timed(peer, lambda out: out, sizes.rounds)
  emit("sface", batch=sizes.sface_batch, gmia_per_s=sizes.sface_batch / seconds,
       compile_s=first - seconds, peer_per_s=sizes.sface_batch / peer_seconds,
       provider=provider)

  # YuNet's graph fixes batch 1, so onnxruntime takes the photos one at a time; gmia maps
  # (CPU) or vmaps (accelerators) them, as gmia.faces.embedder does.
  net = detect.load_yunet(yunet_path)
  photos = rng.uniform(0, 255, (sizes.yunet_batch, 640, 640, 3)).astype(np.float32)
  nchw = np.ascontiguousarray(photos[..., ::-1].transpose(0, 3, 1, 2))
  per_photo = 1 if on_cpu else None
  find = jax.jit(lambda p, x, f: detect.detect_faces(net, p, x, f, batch_size=per_photo))
  network = jax.jit(lambda p, x: net.apply_each(p, x, batch_size=per_photo))
  params = jax.device_put(net.params)
  device_photos, device_nchw = jax.device_put(photos), jax.device_put(nchw)
  factors = jax.device_put(np.ones(sizes.yunet_batch, np.float32))
  first, seconds = timed(lambda: find(params, device_photos, factors), jax.block_until_ready,
                         sizes.rounds)
  _, network_seconds = timed(lambda: network(params, device_nchw), jax.block_until_ready,
                             sizes.rounds)
  session, device, provider = _ort_session(yunet_path, free_batch=False)
  calls = [_ort_call(session, {"input": nchw[i:i + 1]}, device) for i in range(len(nchw))]
  _, peer_seconds = timed(lambda: [call() for call in calls], lambda out: out, sizes.rounds)
  emit("yunet", batch=sizes.yunet_batch, gmia_detect_per_s=sizes.yunet_batch / seconds,
       gmia_network_per_s=sizes.yunet_batch / network_seconds, compile_s=first - seconds,
       peer_per_s=sizes.yunet_batch / peer_seconds, provider=provider)


def _stand_in_generator(workdir: str, sizes: Sizes) -> str:
  """A gmia workdir holding a random StyleGAN2 of NVIDIA's shapes at the attack's resolution:
  the `gmia:` source of a generator gmia trained (only what gmia.runs reads is recorded)."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from gmia.checkpoint import Checkpointer
  from gmia.models import stylegan

  config = ml_collections.ConfigDict({
      "data": {"resolution": sizes.resolutions[0]},
      "model": {"z_dim": sizes.latent, "w_dim": sizes.latent,
                "mapping_layers": sizes.mapping_layers, "fused_modconv": False,
                "channel_base": sizes.channel_bases[0], "channel_max": sizes.channel_max}})
  generator = stylegan.generator_from_config(config)
  g_vars = jax.jit(lambda: generator.init({"params": jax.random.key(0),
                                           "noise": jax.random.key(1)},
                                          jnp.zeros((1, sizes.latent))))()
  path = os.path.join(workdir, "stand_in_generator")
  checkpointer = Checkpointer(path)
  checkpointer.save(1, {"g_ema": g_vars["params"], "g_params": g_vars["params"],
                        "g_buffers": g_vars["buffers"]},
                    {"kind": "gan", "config": config.to_dict()})
  checkpointer.close()
  return path


def section_attack(args, sizes: Sizes) -> None:
  import jax
  import ml_collections
  from gmia import parallel, sources
  from gmia.attacks import identity_membership as im
  from gmia.attacks.samples import make_sample_embedder
  from gmia.faces import embedder as embedder_lib

  sface_path, yunet_path = asset_paths(args)
  resolution = sizes.resolutions[0]
  pickle = pickle_stem(args.workdir, resolution) + ".pkl"
  config = ml_collections.ConfigDict({**sources.config_fields(), **embedder_lib.config_fields()})
  if os.path.exists(pickle):
    config.generator, generator = f"stylegan2_pkl:{pickle}", "NVIDIA's pickle, imported"
  else:
    config.generator = f"gmia:{_stand_in_generator(args.workdir, sizes)}"
    generator = "a random gmia StyleGAN2 standing in (no NVIDIA pickle)"
  config.update(align="detect", detector_onnx=yunet_path)
  config.matcher.update(path=sface_path, preset="sface")
  mesh = parallel.make_mesh()
  source = sources.open_source(config)
  # YuNet at the size the attack chooses for these samples; with the thresholds off, every
  # sample counts as a face.
  face_embedder = embedder_lib.load_embedder(config).for_samples(resolution)
  face_embedder = dataclasses.replace(face_embedder, sample_rules=dataclasses.replace(
      face_embedder.sample_rules, score_threshold=0.0, min_face=0.0, similar_size=math.inf))
  detector_size = face_embedder.sample_detector.input_shapes[0][-1]
  samples = make_sample_embedder(source, face_embedder, mesh, sizes.attack_chunk)

  matcher = face_embedder.matcher
  dim = jax.eval_shape(matcher.embed, matcher.params, jax.ShapeDtypeStruct(
      (1, matcher.input_size, matcher.input_size, 3), np.float32)).shape[-1]
  embeddings = np.random.default_rng(0).standard_normal((sizes.attack_photos, dim))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  person = np.arange(sizes.attack_photos) % sizes.attack_people
  groups = {str(i): "member" if i % 2 else "population" for i in range(sizes.attack_people)}
  refs = im.make_references(embeddings.astype(np.float32), person,
                            np.arange(sizes.attack_photos), groups)

  def attack(num_samples: int, state_dir: str):
    return im.stream(samples.embed, num_samples, sizes.attack_chunk, refs, threshold=0.5,
                     k=TOP_K, state_dir=state_dir, fingerprint={}, mesh=mesh)

  start = time.perf_counter()
  attack(sizes.attack_chunk, os.path.join(args.workdir, "attack_compile"))
  first = time.perf_counter() - start
  start = time.perf_counter()
  evidence, _ = attack(sizes.attack_samples, os.path.join(args.workdir, "attack"))
  seconds = time.perf_counter() - start
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    peak, memory = stats["peak_bytes_in_use"], "device memory (memory_stats)"
  else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory = f"host RSS ({jax.devices()[0].platform} reports no memory_stats)"
  emit("attack", resolution=resolution, detector_size=detector_size, generator=generator,
       samples=sizes.attack_samples, chunk=sizes.attack_chunk, photos=sizes.attack_photos,
       people=sizes.attack_people,
       samples_per_s=sizes.attack_samples / seconds, first_chunk_s=first,
       observed=int(evidence.num_samples), peak_mib=peak / MIB, memory=memory)


CHILDREN = {"header": section_header, "kernel": section_kernel, "nvidia": section_nvidia,
            "nvidia_build": section_nvidia_build, "stylegan": section_stylegan,
            "faces": section_faces, "attack": section_attack}


# ------------------------------------------------------------------------------------------------
# The parent: runs the sections, prints their lines and the ratios.


def child_command(args, python: str, section: str) -> list[str]:
  """The command line of section `section` as a child of this run."""
  return [python, os.path.abspath(__file__), *(["--toy"] if args.toy else []),
          "--nvidia_repo", args.nvidia_repo, "--nvidia_ops", args.nvidia_ops, "--sface",
          args.sface, "--yunet", args.yunet, "--section", section, "--workdir", args.workdir]


def records_of(output: str) -> list[dict]:
  return [json.loads(line[len(RECORD):]) for line in output.splitlines()
          if line.startswith(RECORD)]


def last_line(text: str) -> str:
  """The error a child's output ends with: its last `NameError: message` line (Python's
  traceback may print notes after it), else its last line."""
  lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
  errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
  return (errors or lines or ["no output"])[-1]


class Run:
  """The sections of one run, against one deadline."""

  def __init__(self, args, sizes: Sizes):
    self.args, self.sizes = args, sizes
    self.start = time.perf_counter()
    self.deadline = self.start + args.deadline_s
    # Children still to run, in order: each keeps RESERVE_S of the deadline for those after it.
    chosen = args.sections.split(",")
    self.pending = [name for name in ("header", "kernel", "nvidia", "stylegan", "faces",
                                      "attack")
                    if name in chosen or (name == "nvidia" and "stylegan" in chosen)]
    self.records: list[dict] = []
    self.problems: dict[str, str] = {}
    self.seconds: dict[str, float] = {}
    self.nvidia_reason = nvidia_unavailable(args)

  def time_left(self, name: str) -> float:
    """Seconds `name` may take: its budget, within what the sections after it leave."""
    later = self.pending[self.pending.index(name) + 1:] if name in self.pending else []
    return min(self.sizes.budgets[name],
               self.deadline - time.perf_counter() - RESERVE_S * len(later))

  def section(self, name: str, python: str = sys.executable) -> list[dict]:
    """Runs section `name` in a child; its records, or [] and a one-line reason in problems."""
    budget = self.time_left(name)
    if name in self.pending:
      self.pending.remove(name)
    if budget < 5:
      self.problems[name] = "not run: the run's deadline has passed"
      return []
    started = time.perf_counter()
    # A session of its own, so that a child stopped at its budget goes with what it started
    # (a compiler, say).
    child = subprocess.Popen(child_command(self.args, python, name), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=child_env(),
                             start_new_session=True)
    try:
      out, err = child.communicate(timeout=budget)
      problem = f"failed: {last_line(err)}" if child.returncode else None
    except subprocess.TimeoutExpired:
      os.killpg(child.pid, signal.SIGKILL)
      out, err = child.communicate()
      problem = f"stopped after {budget:.0f} s (its budget); lines above are what it finished"
    self.seconds[name] = time.perf_counter() - started
    self.log(name, err)
    records = records_of(out)
    self.records += records
    if problem:
      self.problems[name] = problem
    return records

  def log(self, name: str, text: str) -> None:
    """Appends a child's stderr to --log (warnings, tracebacks), if asked for."""
    if self.args.log:
      with open(self.args.log, "a") as handle:
        handle.write(f"===== {name} ({self.seconds.get(name, 0):.0f} s)\n{text}\n")


def child_env() -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  if os.path.isdir(ASSETS):
    env.setdefault("GMIA_TEST_ASSETS", ASSETS)
  return env


def nvidia_unavailable(args) -> str | None:
  """Why NVIDIA's peer cannot run here, or None."""
  if "stylegan" not in args.sections.split(","):
    return "not asked for"
  reasons = []
  probe = subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True,
                         text=True)
  if probe.returncode:
    reasons.append(f"torch is not importable by {args.torch_python} "
                   f"({last_line(probe.stderr)})")
  if not os.path.isdir(os.path.join(args.nvidia_repo, "training")):
    reasons.append(f"NVIDIA's stylegan2-ada-pytorch is not at {args.nvidia_repo} "
                   "(bash bench/prepare_accelerator.sh fetches it)")
  return "; ".join(reasons) or None


def fmt(value: float) -> str:
  """A rate with about three significant digits."""
  return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def print_header(run: Run) -> None:
  print("== header", flush=True)
  for r in run.section("header"):
    gpu = r["nvidia_smi"] or r["device_kind"]
    print(f"GPU: {gpu}; JAX {r['jax']} ({r['platform']}), {r['devices']} device(s); "
          f"jaxlib {r['jaxlib']}, flax {r['flax']}, optax {r['optax']}, orbax {r['orbax']}, "
          f"onnx {r['onnx']}, onnxruntime {r['onnxruntime']} ({', '.join(r['ort_providers'])}), "
          f"torch {r['torch'] or 'absent'}, Python {r['python']}, {r['cpus']} CPUs", flush=True)
  report_problem(run, "header")


def print_kernel(run: Run) -> list[str]:
  print("== top-k similarity kernel against the matmul rate", flush=True)
  summary, matmul = [], {}
  for r in run.section("kernel"):
    if r["kind"] == "matmul":
      matmul[r["dtype"]] = r["tflops"]
      print(f"matmul {r['dtype']} {r['n']}^3 (jnp.dot, precision {r['precision']}): "
            f"{r['tflops']:.3g} TFLOP/s", flush=True)
      continue
    share = r["tflops"] / matmul[r["dtype"]]
    print(f"top-k kernel {r['dtype']} {r['queries']:,} x {r['refs']:,} x {r['dim']}, k {r['k']}, "
          f"chunk {r['chunk']}: {r['tflops']:.3g} TFLOP/s, {share:.2f} of the {r['dtype']} matmul "
          f"(goal >= 0.70; compile {r['compile_s']:.1f} s)", flush=True)
    summary.append((r["dtype"], r["chunk"], share, r["tflops"]))
  report_problem(run, "kernel")
  best = {}
  for dtype, chunk, share, tflops in summary:
    if dtype not in best or share > best[dtype][1]:
      best[dtype] = (chunk, share, tflops)
  return [f"top-k kernel {dtype} (chunk {chunk}): {tflops:.3g} TFLOP/s = {share:.2f} of the "
          f"matmul rate (goal >= 0.70)" for dtype, (chunk, share, tflops) in best.items()]


def print_stylegan(run: Run, build: subprocess.Popen | None, build_log: str) -> list[str]:
  print("== StyleGAN2 generation: gmia against NVIDIA's stylegan2-ada-pytorch (same GPU, "
        "batch, z, noise_mode const, strict fp32)", flush=True)
  nvidia = {}
  if run.nvidia_reason:
    print(f"NVIDIA: skipped: {run.nvidia_reason}; gmia runs random networks of the same shapes",
          flush=True)
  else:
    if build is not None:
      build_records = wait_for_build(run, build, build_log)
      for r in build_records:
        print(f"NVIDIA's CUDA ops: {'built' if r['ok'] else 'not built: ' + r['reason']} "
              f"({r['seconds']:.0f} s, in the background)", flush=True)
      if not any(r["ok"] for r in build_records):
        run.args.nvidia_ops = "ref"
    for r in run.section("nvidia", python=run.args.torch_python):
      nvidia[r["resolution"]] = r
      print(f"NVIDIA {r['resolution']} px (channel_base {r['channel_base']}), batch {r['batch']}: "
            f"{fmt(r['images_per_s'])} images/s on {r['device']} with {r['ops']} "
            f"(torch {r['torch']}; first call {r['first_call_s']:.1f} s)", flush=True)
    report_problem(run, "nvidia")
  summary = []
  for r in run.section("stylegan"):
    line = (f"gmia {r['resolution']} px {r['variant']} ({r['weights']} weights), batch "
            f"{r['batch']}: {fmt(r['images_per_s'])} images/s (compile {r['compile_s']:.1f} s)")
    peer = nvidia.get(r["resolution"])
    if peer:
      ratio = r["images_per_s"] / peer["images_per_s"]
      line += (f", {ratio:.2f}x NVIDIA (goal >= 1.0); outputs differ by <= "
               f"{r['max_abs_diff']:.2g} (|output| <= {r['output_abs_max']:.2g})")
      summary.append(f"StyleGAN2 {r['resolution']} px {r['variant']}: gmia "
                     f"{fmt(r['images_per_s'])} images/s = {ratio:.2f}x NVIDIA with "
                     f"{peer['ops']} (goal >= 1.0)")
    else:
      summary.append(f"StyleGAN2 {r['resolution']} px {r['variant']}: gmia "
                     f"{fmt(r['images_per_s'])} images/s (no NVIDIA peer in this run)")
    print(line, flush=True)
  report_problem(run, "stylegan")
  return summary


def print_faces(run: Run) -> list[str]:
  print("== face networks: gmia.faces against onnxruntime", flush=True)
  summary = []
  records = run.section("faces")
  if any(r["provider"].startswith("CPU") for r in records):
    print("onnxruntime here has no CUDA provider: its CPU provider is the peer", flush=True)
  for r in records:
    if r["kind"] == "sface":
      ratio = r["gmia_per_s"] / r["peer_per_s"]
      print(f"SFace batch {r['batch']}: gmia {fmt(r['gmia_per_s'])} embeddings/s (compile "
            f"{r['compile_s']:.1f} s), onnxruntime {fmt(r['peer_per_s'])}/s ({r['provider']}): "
            f"ratio {ratio:.2f}", flush=True)
      summary.append(f"SFace: gmia {ratio:.2f}x onnxruntime's {r['provider']}")
    else:
      ratio = r["gmia_detect_per_s"] / r["peer_per_s"]
      print(f"YuNet 640 px, {r['batch']} photos: gmia detect_faces {fmt(r['gmia_detect_per_s'])} "
            f"photos/s with decoding and NMS (compile {r['compile_s']:.1f} s), network alone "
            f"{fmt(r['gmia_network_per_s'])}/s; onnxruntime network {fmt(r['peer_per_s'])}/s "
            f"({r['provider']}): ratio {ratio:.2f}", flush=True)
      summary.append(f"YuNet: gmia detect_faces {ratio:.2f}x onnxruntime's network "
                     f"({r['provider']})")
  report_problem(run, "faces")
  return summary


def print_attack(run: Run) -> list[str]:
  print("== membership attack end to end", flush=True)
  summary = []
  for r in run.section("attack"):
    print(f"attack at {r['resolution']} px, generator {r['generator']}, YuNet at "
          f"{r['detector_size']} px + SFace, "
          f"{r['photos']:,} reference photos of {r['people']:,} people: {r['samples']:,} samples "
          f"in chunks of {r['chunk']}: {fmt(r['samples_per_s'])} samples/s end to end (first "
          f"chunk, compiling, {r['first_chunk_s']:.1f} s); peak {r['memory']} "
          f"{r['peak_mib']:,.0f} MiB", flush=True)
    summary.append(f"attack at {r['resolution']} px: {fmt(r['samples_per_s'])} samples/s, peak "
                   f"{r['memory']} {r['peak_mib']:,.0f} MiB")
  report_problem(run, "attack")
  return summary


def report_problem(run: Run, name: str) -> None:
  if name in run.problems:
    print(f"{name}: {run.problems[name]}", flush=True)


def start_build(run: Run) -> tuple[subprocess.Popen | None, str]:
  """NVIDIA's CUDA ops compile on the CPUs while the header and kernel sections run."""
  log = os.path.join(run.args.workdir, "nvidia_build.log")
  if run.nvidia_reason or run.args.nvidia_ops == "ref":
    return None, log
  with open(log, "w") as handle:
    return subprocess.Popen(child_command(run.args, run.args.torch_python, "nvidia_build"),
                            stdout=handle, stderr=subprocess.STDOUT, env=child_env(),
                            start_new_session=True), log


def wait_for_build(run: Run, build: subprocess.Popen, log: str) -> list[dict]:
  """The build's record; stopped (with its compilers) past half the NVIDIA section's budget."""
  budget = run.time_left("nvidia") / 2
  stopped = False
  try:
    build.wait(timeout=max(budget, 1))
  except subprocess.TimeoutExpired:
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    stopped = True
  with open(log) as handle:
    text = handle.read()
  run.log("nvidia_build", text)
  if stopped:
    return [{"ok": False, "seconds": budget, "reason": "still compiling, stopped"}]
  return records_of(text) or [{"ok": False, "seconds": 0.0, "reason": last_line(text)}]


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--toy", action="store_true", help="tiny sizes: every section on a CPU")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated, of {', '.join(SECTIONS)}")
  parser.add_argument("--deadline_s", type=float, default=450.0,
                      help="the run stops starting sections and cuts their budgets to this")
  parser.add_argument("--nvidia_repo", default=NVIDIA_REPO,
                      help="stylegan2-ada-pytorch work tree (bench/prepare_accelerator.sh)")
  parser.add_argument("--torch_python", default=sys.executable,
                      help="the Python that runs NVIDIA's code (default: this one)")
  parser.add_argument("--nvidia_ops", choices=("cuda", "ref"), default="cuda",
                      help="NVIDIA's custom CUDA ops, or its reference implementation")
  parser.add_argument("--sface", default="", help="SFace ONNX file (default: tests/assets.py)")
  parser.add_argument("--yunet", default="", help="YuNet ONNX file (default: tests/assets.py)")
  parser.add_argument("--json", default="", help="also write every record and the summary here")
  parser.add_argument("--log", default="", help="also write the sections' warnings and errors here")
  parser.add_argument("--section", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  unknown = set(args.sections.split(",")) - set(SECTIONS)
  if unknown:
    parser.error(f"--sections: unknown {sorted(unknown)}; sections: {', '.join(SECTIONS)}")
  return args


def main() -> None:
  args = parse_args()
  sizes = TOY if args.toy else FULL
  if args.section:
    CHILDREN[args.section](args, sizes)
    return
  chosen = args.sections.split(",")
  with tempfile.TemporaryDirectory() as workdir:
    args.workdir = workdir
    run = Run(args, sizes)
    print(f"gmia accelerator benchmark ({'toy' if args.toy else 'full'} sizes), deadline "
          f"{args.deadline_s:.0f} s", flush=True)
    build, build_log = start_build(run)
    summary = []
    if "header" in chosen:
      print_header(run)
    if "kernel" in chosen:
      summary += print_kernel(run)
    if "stylegan" in chosen:
      summary += print_stylegan(run, build, build_log)
    if "faces" in chosen:
      summary += print_faces(run)
    if "attack" in chosen:
      summary += print_attack(run)
    wall = time.perf_counter() - run.start
    print("== summary", flush=True)
    for line in summary + [f"{name}: {problem}" for name, problem in run.problems.items()]:
      print(line, flush=True)
    print(f"wall time {wall:.0f} s (sections: "
          + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in run.seconds.items()) + ")",
          flush=True)
    if args.json:
      from gmia import files
      files.write_json(args.json, {"sizes": "toy" if args.toy else "full",
                                   "records": run.records, "summary": summary,
                                   "problems": run.problems, "wall_s": wall})


if __name__ == "__main__":
  main()
