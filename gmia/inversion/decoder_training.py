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
drawn on device inside the jitted step, and Orbax
checkpoints carry the whole state (zero-shot: the synthesised images too), so a run killed and
resumed in the same workdir reproduces the uninterrupted one. At the end, every layer's decoder
is measured on held-out photos of config.eval_group (PSNR, SSIM; eval.json, decoded.png).

API for other jobs:

    decoder, variables, meta = load_decoder(workdir, layer="stage2")
    images = decode(decoder, variables, features)
    # features: f32[B, *decoder.feature_shape], as
    #   model.apply(net_vars, x, train=False, capture=(layer,))[layer] gives them for images x
    #   f32[B, S, S, 3] in [-1, 1] at the network's input size S (meta["image_size"]);
    # images: f32[B, S, S, 3] in [-1, 1]. `decode` is jitted (decoder static).
    # meta: {"config", "method", "layers", "image_size", "decoders", "network", ...}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from gmia import files, metrics, parallel, viz
from gmia.checkpoint import Checkpointer, check_config_matches
from gmia.data import run_data
from gmia.data.split import IdentitySplit
from gmia.encoder.embed import preprocess
from gmia.inversion import decoder_synthesis, priors
from gmia.models.decoders import (Decoder, activation_statistics, block_name, feature_shapes,
                                  inverse_chain)
from gmia.progress import Progress

METHODS = ("aux", "zero_shot")
NETWORK_KINDS = ("encoder", "classifier")
# Config entries a resumed run must share with the checkpoint it continues.
RESUME_KEYS = ("network", "layers", "method", "data", "aux_group", "decoder", "batch_size", "seed",
               "stats_images", "aux", "synthesis", "blocks", "chain")
EVAL_FILE = "eval.json"
GRID_FILE = "decoded.png"
GRID_ROWS = 8


def default_config() -> ml_collections.ConfigDict:
  """Every option of the decoder trainer; train/configs/decoder_*.py start here."""
  return ml_collections.ConfigDict({
      # The network to invert: a workdir of train/train_arcface.py ("encoder") or of
      # train/train_classifier.py ("classifier").
      "network": {"kind": "encoder", "workdir": ""},
      "layers": ("stem", "stage1", "stage2"),  # Split layers: one decoder each.
      "method": "zero_shot",                   # "aux" or "zero_shot".
      "data": run_data.default_config(),       # Auxiliary photos and victims; the network's split.
      "aux_group": "encoder",                  # aux: whose photos train the decoders.
      "eval_group": "non_members",             # Victims: photos the decoders are measured on.
      "num_eval": 256,
      "stats_images": 256,                     # Training inputs that set the decoders' units.
      "decoder": {"width": 32, "depth": 1},    # gmia.models.decoders.InverseBlock.
      "batch_size": 64,
      "seed": 0,
      "log_every": 100,
      "checkpoint_every": 500,
      "aux": {"num_steps": 2000, "learning_rate": 1e-3, "feature_weight": 0.0, "mirror": True},
      "synthesis": {f.name: f.default
                    for f in dataclasses.fields(decoder_synthesis.SynthesisSettings)},
      "blocks": {"num_steps": 1000, "learning_rate": 1e-3, "cycle_weight": 1.0},
      "chain": {"num_steps": 1000, "learning_rate": 3e-4, "cycle_weight": 1.0,
                "block_weight": 1.0},
  })


# ------------------------------------------------------------------------------------------------
# The network.


@dataclasses.dataclass(frozen=True)
class Network:
  """A split-protocol network: model, its {"params", "batch_stats"} and its input side."""
  model: nn.Module
  variables: dict[str, Any]
  image_size: int


def load_network(network_config: ml_collections.ConfigDict) -> Network:
  """The network a config's `network` block names (kind and workdir)."""
  kind, workdir = network_config.kind, network_config.workdir
  if kind not in NETWORK_KINDS:
    raise ValueError(f"unknown network kind {kind!r}; choose from {NETWORK_KINDS}")
  if not workdir:
    raise ValueError("config.network.workdir is required: the workdir of the network to invert")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"config.network.workdir={workdir!r} holds no checkpoints: train the "
                     f"{kind} there first")
  if kind == "encoder":
    from gmia.encoder.trainer import load_encoder as load
  else:
    from gmia.classifier.trainer import load_classifier as load
  model, variables = load(workdir)
  image_size = int(Checkpointer(workdir).restore_meta()["config"]["model"]["input_size"])
  return Network(model, variables, image_size)


def activations(network: Network, variables: Mapping[str, Any], images: jax.Array,
                layers: Sequence[str]) -> dict[str, jax.Array]:
  """{layer: f32[B, ...]} of the network in inference mode on images f32[B, S, S, 3]."""
  return network.model.apply(variables, images, train=False, capture=tuple(layers))


def run_block(network: Network, variables: Mapping[str, Any], inputs: jax.Array,
              layer: str) -> jax.Array:
  """The block that ends at `layer` alone, on its input (the image for the first block)."""
  index = network.model.layers.index(layer)
  start = network.model.layers[index - 1] if index else None
  return network.model.apply(variables, inputs, train=False, start=start, capture=(layer,))[layer]


def layers_through(network: Network, layers: Sequence[str]) -> tuple[str, ...]:
  """Every layer of the network up to the deepest of `layers`, in forward order."""
  return tuple(network.model.layers[:1 + max(map(network.model.layers.index, layers))])


def block_inputs(network: Network, acts: Mapping[str, jax.Array],
                 images: jax.Array) -> dict[str, jax.Array]:
  """{layer: input of the block ending at layer} for every block up to the deepest layer of
  `acts` (which must hold all layers before it)."""
  layers = layers_through(network, tuple(acts))
  return {layer: acts[layers[i - 1]] if i else images for i, layer in enumerate(layers)}


# ------------------------------------------------------------------------------------------------
# Losses.


def _mean_distance(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Batch mean of the relative squared error (gmia.inversion.priors.feature_distance)."""
  return jnp.mean(priors.feature_distance(prediction, target))


def aux_loss(decoder: Decoder, variables: Mapping[str, Any], network: Network,
             net_vars: Mapping[str, Any], features: jax.Array, images: jax.Array,
             feature_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pixel MSE of decoder(features) against images f32[B, S, S, 3], plus `feature_weight` x the
  relative feature distance of the reconstruction at the decoder's layer."""
  reconstruction = decoder.apply(variables, features)
  pixel = jnp.mean(jnp.square(reconstruction - images))
  terms = {"pixel_mse": pixel}
  loss = pixel
  if feature_weight > 0:
    again = activations(network, net_vars, reconstruction, (decoder.layer,))[decoder.layer]
    terms["feature"] = _mean_distance(again, features)
    loss = loss + feature_weight * terms["feature"]
  return loss, terms


def block_loss(block: Decoder, variables: Mapping[str, Any], network: Network,
               net_vars: Mapping[str, Any], inputs: jax.Array, outputs: jax.Array,
               cycle_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One inverse block g on pairs (x = block input, y = f(x)): relative error of g(y) against x
  plus `cycle_weight` x the relative error of f(g(y)) against y."""
  reconstruction = block.apply(variables, outputs)
  terms = {"error": _mean_distance(reconstruction, inputs)}
  loss = terms["error"]
  if cycle_weight > 0:
    terms["cycle"] = _mean_distance(run_block(network, net_vars, reconstruction, block.layer),
                                    outputs)
    loss = loss + cycle_weight * terms["cycle"]
  return loss, terms


def cycle_loss(decoder: Decoder, variables: Mapping[str, Any], network: Network,
               net_vars: Mapping[str, Any], features: jax.Array,
               inputs: Mapping[str, jax.Array], cycle_weight: float,
               block_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The chained decoder on features f32[B, *feature_shape] of known inputs:
  `cycle_weight` x relative distance between the network's features of the reconstruction and
  `features`, plus `block_weight` x the mean over the chain of the relative error of every
  inverse block's output against its block's true input (`inputs`, as `block_inputs` gives
  them; the image for the last)."""
  outputs = decoder.apply(variables, features, intermediates=True)
  again = activations(network, net_vars, outputs[-1], (decoder.layer,))[decoder.layer]
  terms = {"cycle": _mean_distance(again, features),
           "blocks": sum(_mean_distance(out, inputs[name])
                         for out, (name, _, _) in zip(outputs, decoder.blocks)) / len(outputs),
           "pixel_mse": jnp.mean(jnp.square(outputs[-1] - inputs[decoder.blocks[-1][0]]))}
  return cycle_weight * terms["cycle"] + block_weight * terms["blocks"], terms


# ------------------------------------------------------------------------------------------------
# Steps: `step(state, step_index, consts) -> (state, metrics)`, the batch drawn from
# (seed, step_index). Each is jitted alone and driven from Python: XLA:CPU runs convolution
# gradients inside a compiled loop (lax.scan / fori_loop) 25-40x slower than as separate calls.

Step = Callable[[dict, jax.Array, dict], tuple[dict, dict]]


def _step_key(seed: int, step: jax.Array) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), step)


def _statistics(network: Network, decoders: Mapping[str, Decoder], state: dict) -> dict:
  """{name: the decoder's "stats" collection} from the state's per-layer statistics."""
  return {name: decoder.statistics(network.model.layers, state["layer_stats"])
          for name, decoder in decoders.items()}


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


def _adam_update(tx: optax.GradientTransformation, loss_fn: Callable, params: Any,
                 opt_state: Any) -> tuple[Any, Any, dict]:
  (loss, logged), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss, **logged}


def make_aux_step(network: Network, decoders: Mapping[str, Decoder],
                  tx: optax.GradientTransformation, mesh: Mesh, *, batch_size: int, seed: int,
                  feature_weight: float, mirror: bool) -> Step:
  """Step of the "aux" method on consts {"variables", "photos": uint8[N, H, W, 3]}: a batch of
  photos drawn with replacement (mirrored at random), resized to the network's input size."""
  layers = tuple(decoders)

  def step(state, step_index, consts):
    pick_key, flip_key = jax.random.split(_step_key(seed, step_index))
    photos = consts["photos"]
    images = preprocess(photos[jax.random.randint(pick_key, (batch_size,), 0, len(photos))],
                        network.image_size)
    if mirror:
      flips = jax.random.bernoulli(flip_key, 0.5, (batch_size, 1, 1, 1))
      images = jnp.where(flips, images[:, :, ::-1], images)
    images = jax.lax.with_sharding_constraint(images, parallel.data_sharding(mesh))
    net_vars = consts["variables"]
    acts = activations(network, net_vars, images, layers)
    loss_fn = _summed({
        layer: functools.partial(aux_loss, decoders[layer], network=network, net_vars=net_vars,
                                 features=acts[layer], images=images,
                                 feature_weight=feature_weight)
        for layer in layers}, _statistics(network, decoders, state))
    params, opt_state, logged = _adam_update(tx, loss_fn, state["decoders"], state["decoder_opt"])
    return {**state, "decoders": params, "decoder_opt": opt_state,
            "step": state["step"] + 1}, logged

  return step


def _synthetic_inputs(network: Network, state: dict, step_index: jax.Array, mesh: Mesh,
                      batch_size: int, seed: int, noise_fraction: float) -> jax.Array:
  images = decoder_synthesis.synthetic_batch(_step_key(seed, step_index), state["pool"],
                                             batch_size, network.image_size, noise_fraction)
  return jax.lax.with_sharding_constraint(images, parallel.data_sharding(mesh))


def make_block_step(network: Network, blocks: Mapping[str, Decoder],
                    tx: optax.GradientTransformation, mesh: Mesh, *, batch_size: int, seed: int,
                    noise_fraction: float, cycle_weight: float) -> Step:
  """Step of the zero-shot "blocks" phase on consts {"variables"}: synthetic inputs through the
  network give every block its (input, output) pairs; every inverse block takes one step."""
  layers = layers_through(network, [block.layer for block in blocks.values()])

  def step(state, step_index, consts):
    net_vars = consts["variables"]
    images = _synthetic_inputs(network, state, step_index, mesh, batch_size, seed,
                               noise_fraction)
    acts = activations(network, net_vars, images, layers)
    inputs = block_inputs(network, acts, images)
    loss_fn = _summed({
        name: functools.partial(block_loss, block, network=network, net_vars=net_vars,
                                inputs=inputs[block.layer], outputs=acts[block.layer],
                                cycle_weight=cycle_weight)
        for name, block in blocks.items()}, _statistics(network, blocks, state))
    params, opt_state, logged = _adam_update(tx, loss_fn, state["blocks"], state["block_opt"])
    return {**state, "blocks": params, "block_opt": opt_state,
            "step": state["step"] + 1}, logged

  return step


def make_chain_step(network: Network, decoders: Mapping[str, Decoder],
                    tx: optax.GradientTransformation, mesh: Mesh, *, batch_size: int, seed: int,
                    noise_fraction: float, cycle_weight: float, block_weight: float) -> Step:
  """Step of the zero-shot "chain" phase on consts {"variables"}: every layer's chained decoder
  takes one step of `cycle_loss` on synthetic inputs."""
  layers = layers_through(network, tuple(decoders))

  def step(state, step_index, consts):
    net_vars = consts["variables"]
    images = _synthetic_inputs(network, state, step_index, mesh, batch_size, seed,
                               noise_fraction)
    acts = activations(network, net_vars, images, layers)
    inputs = block_inputs(network, acts, images)
    loss_fn = _summed({
        layer: functools.partial(cycle_loss, decoder, network=network, net_vars=net_vars,
                                 features=acts[layer], inputs=inputs,
                                 cycle_weight=cycle_weight, block_weight=block_weight)
        for layer, decoder in decoders.items()}, _statistics(network, decoders, state))
    params, opt_state, logged = _adam_update(tx, loss_fn, state["decoders"], state["decoder_opt"])
    return {**state, "decoders": params, "decoder_opt": opt_state,
            "step": state["step"] + 1}, logged

  return step


def chain_params(blocks_params: Mapping[str, Any], decoder: Decoder) -> dict[str, Any]:
  """The decoder's params assembled from separately trained inverse blocks: {block_name: params
  of the one-block Decoder}, each {block_name: InverseBlock params}."""
  return {key: blocks_params[key][key] for key in (block_name(name) for name, _, _ in
                                                    decoder.blocks)}


# ------------------------------------------------------------------------------------------------
# Decoders, state, phases.


def decoder_specs(network: Network, layers: Sequence[str]) -> dict[str, tuple]:
  """{layer: the inverse chain of its decoder} (gmia.models.decoders.inverse_chain)."""
  shapes = feature_shapes(network.model, network.variables, network.image_size)
  return {layer: inverse_chain(network.model.layers, shapes, network.image_size, layer)
          for layer in layers}


def make_decoders(specs: Mapping[str, Sequence], decoder_config: Mapping[str, int]
                  ) -> dict[str, Decoder]:
  """{layer: Decoder} from {layer: chain} (tuples or their JSON lists)."""
  return {layer: Decoder(tuple((name, tuple(a), tuple(b)) for name, a, b in chain),
                         width=decoder_config["width"], depth=decoder_config["depth"])
          for layer, chain in specs.items()}


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


@dataclasses.dataclass(frozen=True)
class Phase:
  """Steps [start, end) of a run: the jitted step, its constants, and a state transform applied
  when the phase begins."""
  name: str
  start: int
  end: int
  step: Callable[..., tuple[dict, dict]]
  consts: dict[str, Any]
  enter: Callable[[dict], dict] | None = None


def make_phases(config: ml_collections.ConfigDict, network: Network,
                decoders: Mapping[str, Decoder], net_vars: dict, photos: jax.Array | None,
                mesh: Mesh) -> list[Phase]:
  """The run's phases: aux: [aux]; zero_shot: [blocks, chain], the chain phase starting from
  the chains of the trained blocks with a fresh optimiser. photos: uint8[N, H, W, 3] (aux)."""
  common = dict(batch_size=config.batch_size, seed=config.seed)
  if config.method == "aux":
    tx = _optimizer(config.aux.learning_rate, config.aux.num_steps)
    step = make_aux_step(network, decoders, tx, mesh, feature_weight=config.aux.feature_weight,
                         mirror=config.aux.mirror, **common)
    return [Phase("aux", 0, config.aux.num_steps, _jit_step(step),
                  {"variables": net_vars, "photos": photos})]
  blocks = _blocks(decoders)
  noise = config.synthesis.noise_fraction
  block_tx = _optimizer(config.blocks.learning_rate, config.blocks.num_steps)
  chain_tx = _optimizer(config.chain.learning_rate, config.chain.num_steps)
  block_step = make_block_step(network, blocks, block_tx, mesh, noise_fraction=noise,
                               cycle_weight=config.blocks.cycle_weight, **common)
  chain_step = make_chain_step(network, decoders, chain_tx, mesh, noise_fraction=noise,
                               cycle_weight=config.chain.cycle_weight,
                               block_weight=config.chain.block_weight, **common)

  @jax.jit
  def enter_chain(state):
    params = {layer: chain_params(state["blocks"], decoder) for layer, decoder in decoders.items()}
    return {**state, "decoders": params, "decoder_opt": chain_tx.init(params)}

  boundary = config.blocks.num_steps
  consts = {"variables": net_vars}
  return [Phase("blocks", 0, boundary, _jit_step(block_step), consts),
          Phase("chain", boundary, boundary + config.chain.num_steps, _jit_step(chain_step),
                consts, enter_chain)]


def _jit_step(step: Step) -> Step:
  return jax.jit(step, donate_argnums=0)


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
# The job.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad entry that needs no network to check."""
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose from {METHODS}")
  if not config.layers or len(set(config.layers)) != len(config.layers):
    raise ValueError(f"layers must be a non-empty list without repeats, got {config.layers}")
  if min(config.batch_size, config.num_eval, config.stats_images) < 1:
    raise ValueError("batch_size, num_eval and stats_images must be positive")
  if config.log_every < 1 or config.checkpoint_every < 1:
    raise ValueError("log_every and checkpoint_every must be positive")
  steps = ([config.aux.num_steps] if config.method == "aux"
           else [config.blocks.num_steps, config.chain.num_steps])
  if min(steps) < 0 or not sum(steps):
    raise ValueError(f"{config.method} needs a positive number of training steps, got {steps}")
  if config.method == "aux" and config.aux_group == config.eval_group:
    raise ValueError(f"aux_group and eval_group are both {config.aux_group!r}: the auxiliary "
                     "photos must be of other people than the victims")
  if config.method == "zero_shot":
    decoder_synthesis.SynthesisSettings(**config.synthesis)


def _check_layers(layers: Sequence[str], network: Network) -> tuple[str, ...]:
  unknown = [layer for layer in layers if layer not in network.model.layers]
  if unknown:
    raise ValueError(f"unknown layer(s) {unknown} in config.layers; the "
                     f"{type(network.model).__name__} splits at {tuple(network.model.layers)}")
  return tuple(sorted(layers, key=network.model.layers.index))


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def _replicated_abstract(tree: Any, mesh: Mesh) -> Any:
  replicated = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), tree)


def _abstract_state(config: ml_collections.ConfigDict, decoders: Mapping[str, Decoder],
                    image_size: int, mesh: Mesh) -> Any:
  pool = None
  if config.method == "zero_shot":
    pool = jax.ShapeDtypeStruct((config.synthesis.num_images, image_size, image_size, 3),
                                jnp.float32)
  deepest = max(decoders.values(), key=lambda d: len(d.blocks))
  layer_stats = {name: {moment: jax.ShapeDtypeStruct(out_shape[-1:], jnp.float32)
                        for moment in ("mean", "std")} for name, _, out_shape in deepest.blocks}
  return _replicated_abstract(jax.eval_shape(
      lambda key: init_state(config, decoders, layer_stats, pool, key), jax.random.key(0)), mesh)


def layer_statistics(network: Network, net_vars: Mapping[str, Any], images: jax.Array,
                     layers: Sequence[str]) -> dict[str, dict[str, jax.Array]]:
  """{layer: {"mean", "std"}} per channel of the network's activations on training inputs
  f32[B, S, S, 3], for every layer up to the deepest of `layers`: the decoders' units."""
  return activation_statistics(activations(network, net_vars, images,
                                           layers_through(network, layers)))


def decoder_variables(network_layers: Sequence[str], decoders: Mapping[str, Decoder],
                      state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{layer: {"params", "stats"}}: what `decode` needs for each layer's decoder in a state."""
  return {layer: {"params": state["decoders"][layer],
                  "stats": decoder.statistics(network_layers, state["layer_stats"])}
          for layer, decoder in decoders.items()}


def _jitted_activations(network: Network, layers: tuple[str, ...]) -> Callable:
  return jax.jit(lambda net_vars, images: activations(network, net_vars, images, layers))


def evaluate(decoders: Mapping[str, Decoder], variables: Mapping[str, Any], network: Network,
             images: jax.Array) -> dict[str, dict[str, float]]:
  """{layer: {"psnr", "ssim"}} of each decoder (variables {layer: {"params", "stats"}}) on the
  network's features of images f32[B, S, S, 3], and {"constant": ...} for the best constant
  image (their own mean)."""
  acts = _jitted_activations(network, tuple(decoders))(network.variables, images)
  results = {}
  for layer, decoder in decoders.items():
    decoded = decode(decoder, variables[layer], acts[layer])
    results[layer] = {"psnr": float(jnp.mean(metrics.psnr(decoded, images))),
                      "ssim": float(jnp.mean(metrics.ssim(decoded, images)))}
  constant = jnp.broadcast_to(jnp.mean(images, axis=0), images.shape)
  results["constant"] = {"psnr": float(jnp.mean(metrics.psnr(constant, images))),
                         "ssim": float(jnp.mean(metrics.ssim(constant, images)))}
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the decoders of every configured layer in `workdir`, then measures
  them on the victims' photos. Returns (and writes to eval.json) {"layers": {layer: {"psnr",
  "ssim"}}, "constant": ..., "train_seconds", ...}."""
  check_config(config)
  network = load_network(config.network)
  layers = _check_layers(config.layers, network)
  os.makedirs(workdir, exist_ok=True)
  arrays, split = run_data.load_for_run(config.data, workdir)
  _check_split_matches(workdir, config.network.workdir)
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  replicated = parallel.replicated(mesh)

  specs = decoder_specs(network, layers)
  decoders = make_decoders(specs, config.decoder)
  photos = None
  if config.method == "aux":
    photos = group_photos(arrays, split, config.aux_group)
    if not len(photos):
      raise ValueError(f"no photos of aux_group {config.aux_group!r} in the split")
    photos = jax.device_put(photos, replicated)
    logging.info("aux decoders: %d photos of group %s", len(photos), config.aux_group)
  net_vars = jax.device_put(network.variables, replicated)
  phases = make_phases(config, network, decoders, net_vars, photos, mesh)
  total = phases[-1].end

  meta = {"config": _config_json(config), "method": config.method, "layers": list(layers),
          "image_size": network.image_size, "decoders": specs,
          "network": {"kind": config.network.kind, "workdir": config.network.workdir,
                      "model": type(network.model).__name__,
                      "layers": list(network.model.layers)}}
  checkpointer = Checkpointer(workdir)
  start = checkpointer.latest_step() or 0
  if start:
    check_config_matches(checkpointer.restore_meta(start)["config"], meta["config"], RESUME_KEYS)
    state, _ = checkpointer.restore(start, _abstract_state(config, decoders,
                                                           network.image_size, mesh))
    logging.info("resumed from step %d", start)
  else:
    key = jax.random.fold_in(jax.random.key(config.seed), 2**20)
    pool = None
    if config.method == "zero_shot":
      began = time.perf_counter()
      settings = decoder_synthesis.SynthesisSettings(**config.synthesis)
      pool = decoder_synthesis.deep_inversion_images(network.model, net_vars, network.image_size,
                                                     settings, key)
      logging.info("synthesised %d DeepInversion images in %.1f s", len(pool),
                   time.perf_counter() - began)
      inputs = decoder_synthesis.synthetic_batch(jax.random.fold_in(key, 1), pool,
                                                 config.stats_images, network.image_size,
                                                 settings.noise_fraction)
    else:
      chosen = jax.random.choice(jax.random.fold_in(key, 1), len(photos),
                                 (min(config.stats_images, len(photos)),), replace=False)
      inputs = preprocess(photos[chosen], network.image_size)
    layer_stats = jax.jit(functools.partial(layer_statistics, network, layers=layers))(
        net_vars, inputs)
    state = jax.jit(functools.partial(init_state, config, decoders),
                    out_shardings=replicated)(layer_stats, pool, jax.random.key(config.seed))

  began = time.perf_counter()
  progress = Progress(total, workdir=workdir, every_steps=config.log_every,
                      items_per_step=config.batch_size, start_step=start)
  step = start
  for phase in phases:
    if step >= phase.end:
      continue
    if step == phase.start and phase.enter is not None:
      state = phase.enter(state)
    while step < phase.end:
      state, logged = phase.step(state, step, phase.consts)
      step += 1
      progress.update(step, {f"{phase.name}/{name}": value for name, value in logged.items()})
      if step % config.checkpoint_every == 0 or step == phase.end:
        checkpointer.save(step, state, meta)
  checkpointer.wait()
  progress.close()
  train_seconds = time.perf_counter() - began

  victims = eval_images(arrays, split, config, network.image_size)
  variables = decoder_variables(network.model.layers, decoders, state)
  results = evaluate(decoders, variables, network, victims)
  summary = {"layers": {layer: results[layer] for layer in layers},
             "constant": results["constant"], "method": config.method,
             "num_eval": int(len(victims)), "train_seconds": train_seconds,
             "steps": total, "resumed_from": start}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, EVAL_FILE), summary)
    _save_grid(os.path.join(workdir, GRID_FILE), decoders, variables, network,
               victims[:GRID_ROWS])
  logging.info("decoders on %d photos of %s: %s", len(victims), config.eval_group,
               json.dumps(summary["layers"]))
  return summary


def _save_grid(path: str, decoders: Mapping[str, Decoder], variables: Mapping[str, Any],
               network: Network, images: jax.Array) -> None:
  """original | decoded at each layer, one row per photo."""
  acts = _jitted_activations(network, tuple(decoders))(network.variables, images)
  columns = [images] + [decode(decoder, variables[layer], acts[layer])
                        for layer, decoder in decoders.items()]
  grid = np.stack([np.asarray(c) for c in columns], axis=1)
  viz.save_grid(path, grid.reshape(-1, *grid.shape[2:]), ncols=len(columns),
                labels=["original", *decoders] * len(images),
                upscale=max(1, 96 // images.shape[1]))


# ------------------------------------------------------------------------------------------------
# Using a trained decoder.


def load_decoder(workdir: str, layer: str | None = None,
                 step: int | None = None) -> tuple[Decoder, dict[str, Any], dict[str, Any]]:
  """(decoder, variables {"params", "stats"}, meta) of `layer`'s decoder trained in `workdir`
  (the only one when `layer` is None). meta holds the run's config, "layers", "image_size" (the
  network input side S the decoder outputs), "method" and "network" (kind, workdir, layers)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"{workdir!r} holds no decoder checkpoints")
  checkpointer = Checkpointer(workdir)
  meta = checkpointer.restore_meta(step)
  config = ml_collections.ConfigDict(meta["config"])
  if layer is None:
    if len(meta["layers"]) != 1:
      raise ValueError(f"{workdir} holds decoders of layers {meta['layers']}: name one")
    layer = meta["layers"][0]
  if layer not in meta["layers"]:
    raise ValueError(f"{workdir} holds no decoder of layer {layer!r}; it has {meta['layers']}")
  decoders = make_decoders(meta["decoders"], config.decoder)
  abstract = _abstract_state(config, decoders, meta["image_size"], parallel.make_mesh())
  state, _ = checkpointer.restore(step, abstract)
  variables = decoder_variables(meta["network"]["layers"], {layer: decoders[layer]}, state)
  return decoders[layer], variables[layer], meta


@functools.partial(jax.jit, static_argnums=0)
def _decode(decoder: Decoder, variables: Mapping[str, Any], features: jax.Array) -> jax.Array:
  return decoder.apply(variables, features)


def decode(decoder: Decoder, variables: Mapping[str, Any], features: jax.Array) -> jax.Array:
  """features f32[B, *decoder.feature_shape] -> images f32[B, S, S, 3] in [-1, 1]; jitted."""
  if features.ndim != 1 + len(decoder.feature_shape) or (
      tuple(features.shape[1:]) != decoder.feature_shape):
    raise ValueError(f"the decoder of layer {decoder.layer} reads features "
                     f"f32[B, {', '.join(map(str, decoder.feature_shape))}], got shape "
                     f"{tuple(features.shape)}")
  if not isinstance(features, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(features))):
    raise ValueError(f"features at {decoder.layer} contain NaN or infinity")
  return _decode(decoder, variables, jnp.asarray(features, jnp.float32))
