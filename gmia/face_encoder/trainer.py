"""Training the face encoder, an IResNet with an additive-margin head (ArcFace / CosFace), as a
task of the gmia training loop.

Only the split's "encoder" identities are used, so the encoder never sees a person the attacks
target. `config.eval_identities` of them are held out (chosen with `config.seed`) and never
trained on: the verification / identification metrics are measured on their photos.

Data parallel over a 1-D mesh: the batch is split over the `data` axis, the backbone replicated,
and the class centres split over the same axis (insightface's Partial FC without sampling), so the
number of training identities can outgrow one device. The loop (gmia.training) checkpoints
params, BN statistics, optimiser state and step; a rerun with the same --workdir resumes and,
since batches and dropout keys are functions of the step, reproduces the uninterrupted run.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gmia import parallel, training
from gmia.checkpoint import Checkpointer
from gmia.data import run_data
from gmia.data.arrays import FaceArrays
from gmia.data.pipeline import Batches
from gmia.data.split import IdentitySplit
from gmia.face_encoder import evaluation
from gmia.models.preprocessing import preprocess
from gmia.models import iresnet
from gmia.models.iresnet import IResNet, init_key, output_dtype
from gmia.models.margins import Margin, padded_num_classes, sharded_margin_loss

KIND = "face_encoder"


def default_config() -> ml_collections.ConfigDict:
  """Every option of the face encoder trainer; train/configs/face_encoder_*.py start here."""
  config = training.default_config()
  config.data = run_data.default_config()
  config.eval_identities = 100   # Encoder identities held out for the verification metrics.
  config.model = dict(blocks=(3, 4, 14, 3), width=64, num_features=512, dropout=0.0,
                      input_size=112, dtype="float32")
  config.margin = dict(kind="arcface", scale=64.0, margin=0.5, easy_margin=False)
  config.optimizer = dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=1000)
  config.batch_size = 128
  config.num_steps = 10_000
  return config


def encoder_sets(arrays: FaceArrays, split: IdentitySplit, eval_identities: int,
                 seed: int) -> tuple[FaceArrays, FaceArrays]:
  """(training photos, held-out evaluation photos) of the split's encoder identities."""
  identities = split.identities("encoder")
  if not 0 < eval_identities < len(identities) - 1:
    raise ValueError(f"eval_identities={eval_identities} must leave at least two of the "
                     f"{len(identities)} encoder identities for training")
  held_out = np.random.default_rng([seed, 7]).permutation(identities)[:eval_identities]
  photos = split.train_photos("encoder")
  photo_identity = arrays.select(photos).identity
  held = np.isin(photo_identity, held_out)
  return arrays.select(photos[~held]), arrays.select(photos[held])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum (insightface) or AdamW; linear warm-up then polynomial (power 2) decay."""
  opt = config.optimizer
  warmup = max(opt.warmup_steps, 1)
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, opt.learning_rate, warmup),
      optax.polynomial_schedule(opt.learning_rate, 0.0, 2, max(config.num_steps - warmup, 1)),
  ], [warmup])
  if opt.name == "sgd":
    # PyTorch SGD's weight_decay adds wd * param to the gradient before momentum.
    return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                       optax.sgd(schedule, momentum=opt.momentum))
  if opt.name == "adamw":
    return optax.adamw(schedule, weight_decay=opt.weight_decay)
  raise ValueError(f"unknown optimizer {opt.name!r}; choose 'sgd' or 'adamw'")


def init_state(model: IResNet, optimizer: optax.GradientTransformation, input_size: int,
               num_centres: int, key: jax.Array) -> dict[str, Any]:
  """Fresh training state: params {backbone, centres}, batch_stats, opt_state, step."""
  backbone_key, centres_key = jax.random.split(key)
  variables = model.init(backbone_key, jnp.zeros((1, input_size, input_size, 3)))
  # insightface's Partial FC draws centres from N(0, 0.01).
  centres = 0.01 * jax.random.normal(centres_key, (num_centres, model.num_features))
  params = {"backbone": variables["params"], "centres": centres}
  # flax keeps parameters and batch statistics in float32; a float64 model holds them in float64.
  params, batch_stats = jax.tree.map(lambda leaf: leaf.astype(output_dtype(model.dtype)),
                                     (params, variables["batch_stats"]))
  return {"params": params, "batch_stats": batch_stats,
          "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """Class centres (and their optimiser moments) split by rows over `data`; all else replicated."""
  def rule(path, leaf):
    if any(getattr(key, "key", None) == "centres" for key in path) and leaf.ndim == 2:
      return NamedSharding(mesh, P(parallel.DATA_AXIS))
    return parallel.replicated(mesh)
  return jax.tree_util.tree_map_with_path(rule, state)


def train_step(state: dict[str, Any], images: jax.Array, labels: jax.Array, *, model: IResNet,
               optimizer: optax.GradientTransformation, margin: Margin, mesh: Mesh,
               num_classes: int, input_size: int, seed: int) -> tuple[dict[str, Any], dict]:
  """One SGD step. images: f32[B, H, W, 3] in [-1, 1]; labels: int32[B] class indices."""
  x = preprocess(images, input_size)
  dropout_key = jax.random.fold_in(jax.random.key(seed), state["step"])

  def loss_fn(params):
    embeddings, updates = model.apply(
        {"params": params["backbone"], "batch_stats": state["batch_stats"]}, x, train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_key})
    loss = sharded_margin_loss(embeddings, params["centres"], labels, margin, mesh,
                               parallel.DATA_AXIS, num_classes)
    return loss, updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
               "step": state["step"] + 1}
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def _encoder_variables(state: dict[str, Any]) -> dict[str, Any]:
  return {"params": state["params"]["backbone"], "batch_stats": state["batch_stats"]}


def make_task(config: ml_collections.ConfigDict, workdir: str) -> training.Task:
  """The face encoder's task: the encoder identities' photos with their class labels, the
  IResNet and its class centres, and the held-out verification metrics."""
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  arrays, split = run_data.load_for_run(config.data, workdir)
  train_set, eval_set = encoder_sets(arrays, split, config.eval_identities, config.seed)
  classes = np.unique(train_set.identity)
  labels = np.searchsorted(classes, train_set.identity).astype(np.int32)
  logging.info("face encoder training: %d photos of %d identities; evaluation: %d photos of %d "
               "held-out identities", len(train_set), len(classes), len(eval_set),
               eval_set.num_identities)
  # Centre rows are padded for the mesh; a resumed run keeps the rows its checkpoint has, which
  # any mesh whose device count divides them can split.
  devices = mesh.shape[parallel.DATA_AXIS]
  num_centres = padded_num_classes(len(classes), devices)
  checkpointer = Checkpointer(workdir)
  if checkpointer.latest_step():
    num_centres = checkpointer.restore_meta()["num_centres"]
    if num_centres % devices:
      raise ValueError(f"the checkpoint's {num_centres} class-centre rows do not split over "
                       f"{devices} devices; resume on a device count that divides them")
  checkpointer.close()

  model = iresnet.from_config(config.model)
  optimizer = make_optimizer(config)
  margin = Margin(**config.margin)
  step = functools.partial(train_step, model=model, optimizer=optimizer, margin=margin, mesh=mesh,
                           num_classes=len(classes), input_size=config.model.input_size,
                           seed=config.seed)
  labelled_step = lambda state, batch, _: step(state, batch["images"], batch["labels"])
  batches = Batches(train_set.images, global_batch_size=config.batch_size, seed=config.seed,
                    mirror=True, labels=labels)
  baseline = evaluation.pixel_identification(eval_set.images, eval_set.identity)
  logging.info("pixel-space 1-NN identification on the held-out identities: %.4f", baseline)

  def held_out_metrics(state):
    metrics = evaluation.evaluate(model, _encoder_variables(state), eval_set.images,
                                  eval_set.identity, mesh)
    return {**metrics, "pixel_identification_1nn": baseline}

  return training.Task(
      kind=KIND,
      init=lambda _: init_state(model, optimizer, config.model.input_size, num_centres,
                                init_key(config.seed)),
      phases=[training.Phase("train", config.num_steps, labelled_step, batches.at)],
      meta={"classes": classes.tolist(), "num_centres": num_centres,
            "eval_identities": np.unique(eval_set.identity).tolist()},
      evaluate=held_out_metrics, shardings=state_shardings, items_per_step=config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) in `workdir`; the result's metrics are the final held-out ones (also
  in eval.json)."""
  return training.run(lambda: make_task(config, workdir), config, workdir)
