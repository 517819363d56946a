"""Learned inversion of split networks: one feed-forward decoder per split layer.

The attacker sees a network's activations at layer k (f32[B, *feature_shape]) and holds the
network; a gmia.models.decoders.Decoder maps them back to the image in one forward pass. Two
ways to train it (config.method):

- "aux" (He et al., ACSAC 2019, black-box inverse network): auxiliary photos of identities
  disjoint from the victims (config.aux_group of the split) go through the frozen network; the
  decoder learns features -> photo with the pixel MSE, plus optionally the relative feature
  distance of its reconstruction at layer k (aux.feature_weight).
- "zero_shot" (Dong et al., arXiv 2107.06304): no real photo at all. Inputs are synthesised from
  the network (gmia.inversion.decoder_synthesis: noise and DeepInversion images). Phase
  "blocks": the network runs on them and every inverse block learns its own block alone, block
  output -> block input, with the relative error plus the block's cycle consistency
  (||f_i(g_i(y)) - y||^2 / ||y||^2, blocks.cycle_weight); all blocks train in one step (their
  parameters are disjoint, so this is training each alone on the same batches). Phase "chain":
  each split layer's decoder is the chain of the trained inverse blocks, fine-tuned end to end
  with cycle consistency at the split layer (the network applied to the reconstruction must
  reproduce the observed features, chain.cycle_weight) plus the per-block errors of the
  chain's intermediate reconstructions (chain.block_weight).

Every requested layer trains in one run: one decoder per layer, updated in the same jitted step
(again disjoint parameters, so each trains as it would alone); in zero-shot runs the blocks are
trained once and shared by all layers' chains. Every step's data is a function of (seed, step)
drawn on device inside the jitted step, and the checkpoints of the training loop carry the whole
state (zero-shot: the synthesised images too), so a run killed and resumed in the same workdir
reproduces the uninterrupted one. At the end (and every eval_every steps), every layer's decoder
is measured on held-out photos of config.eval_group (PSNR, SSIM; eval.json, decoded.png).
Trained decoders are used through gmia.inversion.decoding.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from gmia import fingerprint, metrics, parallel, training, viz
from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.inversion import decoder_losses, decoder_synthesis, decoding, networks
from gmia.models.decoders import (Decoder, activation_statistics, block_name, decoder_specs,
                                  decoder_variables, make_decoders)
from gmia.models.preprocessing import preprocess
from gmia.models.split import Network, activations, block_inputs, layers_through

METHODS = ("aux", "zero_shot")
GRID_FILE = "decoded.png"
GRID_ROWS = 8


def default_config() -> ml_collections.ConfigDict:
  """Every option of the decoder trainer; train/configs/decoder_*.py start here."""
  config = training.default_config()
  config.update({
      # The network to invert (gmia.inversion.networks): a workdir of train/train_face_encoder.py
      # or train/train_classifier.py, or an ONNX file; network.layers: where an ONNX graph is cut.
      "network": networks.default_config(),
      "layers": ("stem", "stage1", "stage2"),  # Split layers: one decoder each.
      "method": "zero_shot",                   # "aux" or "zero_shot".
      "data": run_data.default_config(),       # Auxiliary photos and victims; the network's split.
      "aux_group": "encoder",                  # aux: whose photos train the decoders.
      "eval_group": "non_members",             # Victims: photos the decoders are measured on.
      "num_eval": 256,
      "stats_images": 256,                     # Training inputs that set the decoders' units.
      "decoder": {"width": 32, "depth": 1},    # gmia.models.decoders.InverseBlock.
      "batch_size": 64,
      "checkpoint_every": 500,
      "aux": {"num_steps": 2000, "learning_rate": 1e-3, "feature_weight": 0.0, "mirror": True},
      "synthesis": {f.name: f.default
                    for f in dataclasses.fields(decoder_synthesis.SynthesisSettings)},
      "blocks": {"num_steps": 1000, "learning_rate": 1e-3, "cycle_weight": 1.0},
      "chain": {"num_steps": 1000, "learning_rate": 3e-4, "cycle_weight": 1.0,
                "block_weight": 1.0},
  })
  return config


# ------------------------------------------------------------------------------------------------
# Steps. Each is jitted alone by the training loop and driven from Python: XLA:CPU runs
# convolution gradients inside a compiled loop (lax.scan / fori_loop) 25-40x slower than as
# separate calls.

Step = Callable[[dict, Any, dict], tuple[dict, dict]]
# (net_vars, images, activations) -> {name: loss of that entry's variables {"params", "stats"}}.
LossFactory = Callable[[Any, jax.Array, Mapping[str, jax.Array]], Mapping[str, Callable]]


def _step_key(seed: int, step: jax.Array) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


def _summed(loss_fns: Mapping[str, Callable], stats: Mapping[str, Any]) -> Callable:
  """Loss of {name: params} as the sum of each entry's loss on its own variables {"params",
  "stats"}; per-entry terms as metrics "<name>/<term>". Entries share no parameters, so each
  gets the gradient it would get alone."""
  def total(params):
    loss, logged = 0.0, {}
    for name, fn in loss_fns.items():
      value, terms = fn({"params": params[name], "stats": stats[name]})
      loss = loss + value
      logged.update({f"{name}/{term}": v for term, v in terms.items()})
    return loss, logged
  return total


def make_step(network: Network, trained: Mapping[str, Decoder], tx: optax.GradientTransformation,
              *, inputs: Callable[[dict, dict], jax.Array], layers: Sequence[str],
              loss_fns: LossFactory, params: str, opt: str) -> Step:
  """`step(state, _, consts) -> (state, metrics)`: one Adam step of the decoders (or inverse
  blocks) `trained`, held in state[params] with optimiser state state[opt]. `inputs(state,
  consts)` draws the step's images f32[B, S, S, 3] from (seed, state["step"]); the network
  (consts["variables"]) runs on them up to `layers`, and `loss_fns` names each entry's loss."""
  def step(state, _, consts):
    net_vars = consts["variables"]
    images = inputs(state, consts)
    acts = activations(network, net_vars, images, layers)
    stats = {name: decoder.statistics(network.layers, state["layer_stats"])
             for name, decoder in trained.items()}
    loss_fn = _summed(loss_fns(net_vars, images, acts), stats)
    (loss, logged), grads = jax.value_and_grad(loss_fn, has_aux=True)(state[params])
    updates, opt_state = tx.update(grads, state[opt], state[params])
    return {**state, params: optax.apply_updates(state[params], updates), opt: opt_state,
            "step": state["step"] + 1}, {"loss": loss, **logged}

  return step


def aux_inputs(network: Network, mesh: Mesh, *, batch_size: int, seed: int,
               mirror: bool) -> Callable[[dict, dict], jax.Array]:
  """Batches of consts["photos"] (uint8[N, H, W, 3]) drawn with replacement, mirrored at random,
  resized to the network's input size."""
  def inputs(state, consts):
    pick_key, flip_key = jax.random.split(_step_key(seed, state["step"]))
    photos = consts["photos"]
    images = preprocess(photos[jax.random.randint(pick_key, (batch_size,), 0, len(photos))],
                        network.image_size)
    if mirror:
      flips = jax.random.bernoulli(flip_key, 0.5, (batch_size, 1, 1, 1))
      images = jnp.where(flips, images[:, :, ::-1], images)
    return jax.lax.with_sharding_constraint(images, parallel.data_sharding(mesh))
  return inputs


def synthetic_inputs(network: Network, mesh: Mesh, *, batch_size: int, seed: int,
                     noise_fraction: float) -> Callable[[dict, dict], jax.Array]:
  """Batches of fresh noise images and the state's synthesised pool (zero-shot)."""
  def inputs(state, consts):
    images = decoder_synthesis.synthetic_batch(_step_key(seed, state["step"]), state["pool"],
                                               batch_size, network.image_size, noise_fraction)
    return jax.lax.with_sharding_constraint(images, parallel.data_sharding(mesh))
  return inputs


def make_aux_step(network: Network, decoders: Mapping[str, Decoder],
                  tx: optax.GradientTransformation, mesh: Mesh, *, batch_size: int, seed: int,
                  feature_weight: float, mirror: bool) -> Step:
  """Step of the "aux" method: every layer's decoder learns features -> photo."""
  return make_step(
      network, decoders, tx, layers=tuple(decoders), params="decoders", opt="decoder_opt",
      inputs=aux_inputs(network, mesh, batch_size=batch_size, seed=seed, mirror=mirror),
      loss_fns=lambda net_vars, images, acts: {
          layer: functools.partial(decoder_losses.aux_loss, decoder, network=network,
                                   net_vars=net_vars, features=acts[layer], images=images,
                                   feature_weight=feature_weight)
          for layer, decoder in decoders.items()})


def make_block_step(network: Network, blocks: Mapping[str, Decoder],
                    tx: optax.GradientTransformation, mesh: Mesh, *, batch_size: int, seed: int,
                    noise_fraction: float, cycle_weight: float) -> Step:
  """Step of the zero-shot "blocks" phase: synthetic inputs through the network give every
  block its (input, output) pairs; every inverse block takes one step."""
  def loss_fns(net_vars, images, acts):
    inputs = block_inputs(network, acts, images)
    return {name: functools.partial(decoder_losses.block_loss, block, network=network,
                                    net_vars=net_vars, inputs=inputs[block.layer],
                                    outputs=acts[block.layer], cycle_weight=cycle_weight)
            for name, block in blocks.items()}

  return make_step(
      network, blocks, tx, layers=layers_through(network, [b.layer for b in blocks.values()]),
      inputs=synthetic_inputs(network, mesh, batch_size=batch_size, seed=seed,
                              noise_fraction=noise_fraction),
      loss_fns=loss_fns, params="blocks", opt="block_opt")


def make_chain_step(network: Network, decoders: Mapping[str, Decoder],
                    tx: optax.GradientTransformation, mesh: Mesh, *, batch_size: int, seed: int,
                    noise_fraction: float, cycle_weight: float, block_weight: float) -> Step:
  """Step of the zero-shot "chain" phase: every layer's chained decoder takes one step of the
  cycle loss on synthetic inputs."""
  def loss_fns(net_vars, images, acts):
    inputs = block_inputs(network, acts, images)
    return {layer: functools.partial(decoder_losses.cycle_loss, decoder, network=network,
                                     net_vars=net_vars, features=acts[layer], inputs=inputs,
                                     cycle_weight=cycle_weight, block_weight=block_weight)
            for layer, decoder in decoders.items()}

  return make_step(
      network, decoders, tx, layers=layers_through(network, tuple(decoders)),
      inputs=synthetic_inputs(network, mesh, batch_size=batch_size, seed=seed,
                              noise_fraction=noise_fraction),
      loss_fns=loss_fns, params="decoders", opt="decoder_opt")


def chain_params(blocks_params: Mapping[str, Any], decoder: Decoder) -> dict[str, Any]:
  """The decoder's params assembled from separately trained inverse blocks: {block_name: params
  of the one-block Decoder}, each {block_name: InverseBlock params}."""
  return {key: blocks_params[key][key] for key in (block_name(name) for name, _, _ in
                                                    decoder.blocks)}


# ------------------------------------------------------------------------------------------------
# State and phases.


def _blocks(decoders: Mapping[str, Decoder]) -> dict[str, Decoder]:
  """{block_name: one-block Decoder} for every block of the deepest decoder (which contains the
  chains of all shallower ones)."""
  deepest = max(decoders.values(), key=lambda d: len(d.blocks))
  return {block_name(spec[0]): Decoder((spec,), width=deepest.width, depth=deepest.depth,
                                       to_image=index == len(deepest.blocks) - 1)
          for index, spec in enumerate(deepest.blocks)}


def _init_params(decoder: Decoder, key: jax.Array) -> Any:
  return decoder.init(key, jnp.zeros((1, *decoder.feature_shape)))["params"]


def _optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
  """Adam, learning rate cosine-decayed to zero over a phase."""
  return optax.adam(optax.cosine_decay_schedule(learning_rate, max(num_steps, 1)))


def init_state(config: ml_collections.ConfigDict, decoders: Mapping[str, Decoder],
               layer_stats: dict, pool: jax.Array | None, key: jax.Array) -> dict[str, Any]:
  """Fresh state. aux: {decoders, decoder_opt, layer_stats, step}; zero_shot adds {blocks,
  block_opt, pool}. layer_stats: {layer: {"mean", "std"}} of the network on training inputs."""
  keys = dict(zip(decoders, jax.random.split(key, len(decoders))))
  params = {layer: _init_params(decoder, keys[layer]) for layer, decoder in decoders.items()}
  common = {"layer_stats": layer_stats, "step": jnp.zeros((), jnp.int32)}
  if config.method == "aux":
    tx = _optimizer(config.aux.learning_rate, config.aux.num_steps)
    return {"decoders": params, "decoder_opt": tx.init(params), **common}
  blocks = _blocks(decoders)
  block_keys = jax.random.split(jax.random.fold_in(key, 1), len(blocks))
  block_params = {name: _init_params(block, block_key)
                  for (name, block), block_key in zip(blocks.items(), block_keys)}
  block_tx = _optimizer(config.blocks.learning_rate, config.blocks.num_steps)
  chain_tx = _optimizer(config.chain.learning_rate, config.chain.num_steps)
  return {"blocks": block_params, "block_opt": block_tx.init(block_params), "decoders": params,
          "decoder_opt": chain_tx.init(params), "pool": pool, **common}


def layer_statistics(network: Network, net_vars: Mapping[str, Any], images: jax.Array,
                     layers: Sequence[str]) -> dict[str, dict[str, jax.Array]]:
  """{layer: {"mean", "std"}} per channel of the network's activations on training inputs
  f32[B, S, S, 3], for every layer up to the deepest of `layers`: the decoders' units."""
  return activation_statistics(activations(network, net_vars, images,
                                           layers_through(network, layers)))


def make_phases(config: ml_collections.ConfigDict, network: Network,
                decoders: Mapping[str, Decoder], mesh: Mesh) -> list[training.Phase]:
  """The run's phases: aux: [aux]; zero_shot: [blocks, chain], the chain phase starting from
  the chains of the trained blocks with a fresh optimiser."""
  common = dict(batch_size=config.batch_size, seed=config.seed)
  if config.method == "aux":
    tx = _optimizer(config.aux.learning_rate, config.aux.num_steps)
    step = make_aux_step(network, decoders, tx, mesh, feature_weight=config.aux.feature_weight,
                         mirror=config.aux.mirror, **common)
    return [training.Phase("aux", config.aux.num_steps, step)]
  blocks = _blocks(decoders)
  noise = config.synthesis.noise_fraction
  block_tx = _optimizer(config.blocks.learning_rate, config.blocks.num_steps)
  chain_tx = _optimizer(config.chain.learning_rate, config.chain.num_steps)
  block_step = make_block_step(network, blocks, block_tx, mesh, noise_fraction=noise,
                               cycle_weight=config.blocks.cycle_weight, **common)
  chain_step = make_chain_step(network, decoders, chain_tx, mesh, noise_fraction=noise,
                               cycle_weight=config.chain.cycle_weight,
                               block_weight=config.chain.block_weight, **common)

  def enter_chain(state):
    params = {layer: chain_params(state["blocks"], decoder) for layer, decoder in decoders.items()}
    return {**state, "decoders": params, "decoder_opt": chain_tx.init(params)}

  return [training.Phase("blocks", config.blocks.num_steps, block_step),
          training.Phase("chain", config.chain.num_steps, chain_step, enter=enter_chain)]


def initial_state(config: ml_collections.ConfigDict, network: Network,
                  decoders: Mapping[str, Decoder], consts: Mapping[str, Any],
                  pool: jax.Array | None) -> dict[str, Any]:
  """The fresh state: the decoders' units from the network's activations on training inputs
  (the synthesised pool and noise, or photos), then freshly initialised decoders."""
  key = jax.random.fold_in(jax.random.key(config.seed), 2**20)
  if config.method == "zero_shot":
    inputs = decoder_synthesis.synthetic_batch(jax.random.fold_in(key, 1), pool,
                                               config.stats_images, network.image_size,
                                               config.synthesis.noise_fraction)
  else:
    photos = consts["photos"]
    chosen = jax.random.choice(jax.random.fold_in(key, 1), len(photos),
                               (min(config.stats_images, len(photos)),), replace=False)
    inputs = preprocess(photos[chosen], network.image_size)
  layer_stats = jax.jit(functools.partial(layer_statistics, network, layers=tuple(decoders)))(
      consts["variables"], inputs)
  return jax.jit(functools.partial(init_state, config, decoders))(
      layer_stats, pool, jax.random.key(config.seed))


# ------------------------------------------------------------------------------------------------
# Data.


def group_photos(arrays, split: IdentitySplit, group: str) -> np.ndarray:
  """uint8[N, H, W, 3]: every photo (training and reference) of a split group's identities."""
  ids = np.concatenate([split.train_photos(group), split.reference_photos(group)])
  return arrays.select(np.sort(ids)).images


def eval_images(arrays, split: IdentitySplit, config: ml_collections.ConfigDict,
                image_size: int) -> jax.Array:
  """f32[num_eval, S, S, 3] in [-1, 1]: photos of config.eval_group chosen with config.seed."""
  photos = group_photos(arrays, split, config.eval_group)
  if not len(photos):
    raise ValueError(f"no photos of eval_group {config.eval_group!r} in the split")
  chosen = np.random.default_rng([config.seed, 23]).permutation(len(photos))[:config.num_eval]
  return preprocess(jnp.asarray(photos[np.sort(chosen)]), image_size)


def _check_split_matches(workdir: str, network_workdir: str) -> None:
  """The decoders' victims must be people the network never saw: same split as the network."""
  ours = os.path.join(workdir, run_data.SPLIT_FILE)
  theirs = os.path.join(network_workdir, run_data.SPLIT_FILE)
  if os.path.exists(theirs) and (IdentitySplit.load(ours).to_json()
                                 != IdentitySplit.load(theirs).to_json()):
    raise ValueError(f"config.data makes another identity split than the network's {theirs}: "
                     f"set config.data.split.path={theirs}")


# ------------------------------------------------------------------------------------------------
# Evaluation.


def _jitted_activations(network: Network, layers: tuple[str, ...]) -> Callable:
  return jax.jit(lambda net_vars, images: activations(network, net_vars, images, layers))


def evaluate(decoders: Mapping[str, Decoder], variables: Mapping[str, Any], network: Network,
             images: jax.Array) -> dict[str, float]:
  """{"<layer>/psnr", "<layer>/ssim"} of each decoder (variables {layer: {"params", "stats"}})
  on the network's features of images f32[B, S, S, 3], and "constant/..." for the best constant
  image (their own mean)."""
  acts = _jitted_activations(network, tuple(decoders))(network.variables, images)
  constant = jnp.broadcast_to(jnp.mean(images, axis=0), images.shape)
  reconstructions = {layer: decoding.decode(decoder, variables[layer], acts[layer])
                     for layer, decoder in decoders.items()}
  results = {}
  for name, decoded in {**reconstructions, "constant": constant}.items():
    results[f"{name}/psnr"] = float(jnp.mean(metrics.psnr(decoded, images)))
    results[f"{name}/ssim"] = float(jnp.mean(metrics.ssim(decoded, images)))
  return results


def _save_grid(path: str, decoders: Mapping[str, Decoder], variables: Mapping[str, Any],
               network: Network, images: jax.Array) -> None:
  """original | decoded at each layer, one row per photo."""
  acts = _jitted_activations(network, tuple(decoders))(network.variables, images)
  columns = [images] + [decoding.decode(decoder, variables[layer], acts[layer])
                        for layer, decoder in decoders.items()]
  grid = np.stack([np.asarray(c) for c in columns], axis=1)
  viz.save_grid(path, grid.reshape(-1, *grid.shape[2:]), ncols=len(columns),
                labels=["original", *decoders] * len(images),
                upscale=max(1, 96 // images.shape[1]))


# ------------------------------------------------------------------------------------------------
# The task.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad entry that needs no network to check."""
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose from {METHODS}")
  if not config.layers or len(set(config.layers)) != len(config.layers):
    raise ValueError(f"layers must be a non-empty list without repeats, got {config.layers}")
  if min(config.batch_size, config.num_eval, config.stats_images) < 1:
    raise ValueError("batch_size, num_eval and stats_images must be positive")
  if config.method == "aux" and config.aux_group == config.eval_group:
    raise ValueError(f"aux_group and eval_group are both {config.aux_group!r}: the auxiliary "
                     "photos must be of other people than the victims")
  if config.method == "zero_shot":
    decoder_synthesis.SynthesisSettings(**config.synthesis)


def make_task(config: ml_collections.ConfigDict, workdir: str) -> training.Task:
  """The decoders' task: one decoder per layer of config.layers, trained by config.method, and
  PSNR / SSIM on the victims' photos (plus decoded.png) at every evaluation."""
  check_config(config)
  network = networks.load_network(config.network)
  layers = network.check_layers(config.layers)
  arrays, split = run_data.load_for_run(config.data, workdir)
  _check_split_matches(workdir, config.network.path)
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  specs = decoder_specs(network, layers)
  decoders = make_decoders(specs, config.decoder)
  consts = {"variables": network.variables}
  if config.method == "aux":
    consts["photos"] = group_photos(arrays, split, config.aux_group)
    if not len(consts["photos"]):
      raise ValueError(f"no photos of aux_group {config.aux_group!r} in the split")
    logging.info("aux decoders: %d photos of group %s", len(consts["photos"]), config.aux_group)
  pool_shape = (config.synthesis.num_images, network.image_size, network.image_size, 3)

  def init(consts):
    pool = jnp.zeros(pool_shape) if config.method == "zero_shot" else None
    return initial_state(config, network, decoders, consts, pool)

  def fresh(consts):
    pool = None
    if config.method == "zero_shot":
      began = time.perf_counter()
      pool = decoder_synthesis.deep_inversion_images(
          network.model, consts["variables"], network.image_size,
          decoder_synthesis.SynthesisSettings(**config.synthesis),
          jax.random.fold_in(jax.random.key(config.seed), 2**20))
      logging.info("synthesised %d DeepInversion images in %.1f s", len(pool),
                   time.perf_counter() - began)
    return initial_state(config, network, decoders, consts, pool)

  victims = eval_images(arrays, split, config, network.image_size)

  def held_out(state):
    variables = decoder_variables(network.layers, decoders, state)
    _save_grid(os.path.join(workdir, GRID_FILE), decoders, variables, network,
               victims[:GRID_ROWS])
    return evaluate(decoders, variables, network, victims)

  return training.Task(
      kind=decoding.KIND, init=init, fresh=fresh, consts=consts,
      phases=make_phases(config, network, decoders, mesh),
      meta={"method": config.method, "layers": list(layers), "image_size": network.image_size,
            "decoders": specs,
            "network": {"kind": config.network.kind, "path": config.network.path,
                        "model": type(network.model).__name__, "layers": list(network.layers)}},
      inputs={"network": fingerprint.tree_digest(network.variables)}, evaluate=held_out,
      resumable=frozenset({"network.workdir", "eval_group", "num_eval"}),
      items_per_step=config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) the decoders of every configured layer in `workdir`, then measures
  them on the victims' photos: the result's metrics (also eval.json) are {"<layer>/psnr",
  "<layer>/ssim", "constant/psnr", "constant/ssim"}."""
  return training.run(lambda: make_task(config, workdir), config, workdir)
