"""Decoder training throughput, and inverting by one decoder pass against inverting by optimisation.

  python bench/bench_decoder.py [--batch=32] [--width=16] [--opt_steps=100]

Randomly initialised IResNets (speed does not depend on training): "tiny" (width 4, 16
features) and "demo" (train/configs/face_encoder_cpu_demo.py: width 16, 128 features), one
block per stage, 32 px inputs, split layers stem, stage1 and stage2 trained together as the CPU demo
configs do. Prints training steps/s (and images/s) of the aux step, and of the zero-shot blocks
and chain steps. Then the peer: recovering 8 images from stage2 features by optimisation
(gmia.inversion.features, --opt_steps Adam steps each) against one pass of a stage2 decoder.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from gmia import parallel, training
from gmia.inversion import decoder_synthesis, decoder_training, decoding, features
from gmia.models import split
from gmia.models.decoders import decoder_specs, make_decoders
from gmia.models.iresnet import IResNet, init_key

_BATCH = flags.DEFINE_integer("batch", 32, "Training batch size.")
_WIDTH = flags.DEFINE_integer("width", 16, "Decoder width (least hidden channels).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps per measurement.")
_OPT_STEPS = flags.DEFINE_integer("opt_steps", 100, "Optimisation steps of the peer.")

NETWORKS = {"tiny": dict(width=4, num_features=16), "demo": dict(width=16, num_features=128)}
LAYERS = ("stem", "stage1", "stage2")
SIZE = 32


def steps_per_second(phase: training.Phase, state: dict, consts: dict,
                     num_steps: int) -> tuple[float, dict]:
  """(training steps/s of a phase's step jitted as the training loop does, after a compiling
  step; the state reached)."""
  step_fn = jax.jit(phase.step, donate_argnums=0)
  state, _ = step_fn(state, None, consts)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, _ = step_fn(state, None, consts)
  jax.block_until_ready(state)
  return num_steps / (time.perf_counter() - start), state


def main(argv):
  del argv
  batch = _BATCH.value
  mesh = parallel.make_mesh()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; batch {batch}, decoder "
        f"width {_WIDTH.value}, layers {', '.join(LAYERS)} at {SIZE} px")
  for name, arch in NETWORKS.items():
    model = IResNet(blocks=(1, 1, 1, 1), **arch)
    net_vars = jax.jit(model.init)(init_key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    network = split.Network(model, net_vars, SIZE)
    images = decoder_synthesis.noise_images(jax.random.key(1), 64, SIZE)
    layer_stats = decoder_training.layer_statistics(network, net_vars, images, LAYERS)
    config = decoder_training.default_config()
    config.update(layers=LAYERS, batch_size=batch)
    config.decoder.width = _WIDTH.value
    decoders = make_decoders(decoder_specs(network, LAYERS), config.decoder)
    consts = {"variables": net_vars, "photos": jnp.zeros((256, SIZE, SIZE, 3), jnp.uint8)}
    rates = {}
    for method in ("aux", "zero_shot"):
      config.method = method
      pool = images if method == "zero_shot" else None
      phases = decoder_training.make_phases(config, network, decoders, mesh)
      for phase in phases:
        # Jitted: the state gets buffers of its own (steps donate theirs).
        state = jax.jit(functools.partial(decoder_training.init_state, config, decoders))(
            layer_stats, pool, jax.random.key(2))
        if phase.enter is not None:
          state = jax.jit(phase.enter)(state)
        rates[phase.name], state = steps_per_second(phase, state, consts, _STEPS.value)
    print(f"{name:5s} network: " + "; ".join(
        f"{phase} {rate:6.2f} steps/s ({rate * batch:7.1f} images/s)"
        for phase, rate in rates.items()))

  # Peer: 8 victims' stage2 features inverted by optimisation vs by one decoder pass.
  targets = jax.random.uniform(jax.random.key(3), (8, SIZE, SIZE, 3), minval=-1, maxval=1)
  observed = jax.jit(lambda v, x: model.apply(v, x, capture=("stage2",)))(net_vars, targets)
  invert = features.make_feature_inverter(model, features.FeatureInversionSettings(
      layer="stage2", num_steps=_OPT_STEPS.value))
  keys = jax.random.split(jax.random.key(4), 8)
  jax.block_until_ready(invert(net_vars, observed["stage2"], keys))
  start = time.perf_counter()
  jax.block_until_ready(invert(net_vars, observed["stage2"], keys))
  optimised = time.perf_counter() - start
  variables = {"params": state["decoders"]["stage2"],
               "stats": decoders["stage2"].statistics(model.layers, layer_stats)}
  decode = lambda: decoding.decode(decoders["stage2"], variables, observed["stage2"])
  jax.block_until_ready(decode())
  start = time.perf_counter()
  jax.block_until_ready(decode())
  decoded = time.perf_counter() - start
  print(f"demo network, 8 images from stage2: optimisation ({_OPT_STEPS.value} steps) "
        f"{optimised:.2f} s; one decoder pass {1e3 * decoded:.1f} ms; ratio "
        f"{optimised / decoded:.0f}x")


if __name__ == "__main__":
  app.run(main)
