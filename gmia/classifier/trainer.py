"""Training the ResNet classifier (gmia.models.classifiers) that names the encoder identities, as
a task of the gmia training loop.

A closed-set classifier over the split's "encoder" identities (never the attacks' targets): the
victim network of the split-network inversion studies. `config.eval_photos` photos of every
identity (chosen with `config.seed`) are held out and never trained on; the held-out top-1
accuracy is measured on them.

Data parallel over a 1-D mesh: the batch is split over the `data` axis, the network replicated.
The loop (gmia.training) checkpoints params, BN statistics, optimiser state and step; a rerun
with the same --workdir resumes and, since batches are functions of the step, reproduces the
uninterrupted run.
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
from jax.sharding import Mesh

from gmia import parallel, training
from gmia.data import run_data
from gmia.data.arrays import FaceArrays
from gmia.data.pipeline import Batches
from gmia.data.split import IdentitySplit
from gmia.models.preprocessing import preprocess
from gmia.face_encoder.trainer import make_optimizer
from gmia.models import classifiers
from gmia.models.classifiers import ResNetClassifier
from gmia.models.iresnet import init_key

KIND = "classifier"


def default_config() -> ml_collections.ConfigDict:
  """Every option of the classifier trainer; train/configs/classifier_*.py start here."""
  config = training.default_config()
  config.data = run_data.default_config()
  config.eval_photos = 4         # Photos of every identity held out for the accuracy.
  config.model = dict(widths=(16, 32, 64), blocks=(1, 1, 1), strides=(2, 2, 2), input_size=32,
                      dtype="float32")
  config.optimizer = dict(name="adamw", learning_rate=2e-2, momentum=0.9, weight_decay=5e-4,
                          warmup_steps=50)
  config.mirror = False
  config.batch_size = 128
  config.num_steps = 800
  return config


def classifier_sets(arrays: FaceArrays, split: IdentitySplit, eval_photos: int,
                    seed: int) -> tuple[FaceArrays, FaceArrays, np.ndarray]:
  """(training photos, held-out photos, classes i64[K]) of the split's encoder identities.

  Every identity keeps `eval_photos` of its photos (seeded per identity) for evaluation; class
  k is identity classes[k].
  """
  chosen = arrays.select(split.train_photos("encoder"))
  classes, counts = np.unique(chosen.identity, return_counts=True)
  if len(classes) < 2:
    raise ValueError(f"the split has {len(classes)} encoder identities: a classifier needs two")
  if not 0 < eval_photos < counts.min():
    raise ValueError(f"eval_photos={eval_photos} must be positive and leave every encoder "
                     f"identity a training photo (the fewest photos of one is {counts.min()})")
  held = np.zeros(len(chosen), bool)
  for identity in classes:
    rows = np.flatnonzero(chosen.identity == identity)
    held[np.random.default_rng([seed, 11, int(identity)]).permutation(rows)[:eval_photos]] = True
  train, held_out = (FaceArrays(chosen.images[m], chosen.identity[m], chosen.photo_id[m])
                     for m in (~held, held))
  return train, held_out, classes


def init_state(model: ResNetClassifier, optimizer: optax.GradientTransformation, input_size: int,
               key: jax.Array) -> dict[str, Any]:
  """Fresh training state: params, batch_stats, opt_state, step."""
  variables = model.init(key, jnp.zeros((1, input_size, input_size, 3)))
  return {"params": variables["params"], "batch_stats": variables["batch_stats"],
          "opt_state": optimizer.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}


def train_step(state: dict[str, Any], images: jax.Array, labels: jax.Array, *,
               model: ResNetClassifier, optimizer: optax.GradientTransformation,
               input_size: int) -> tuple[dict[str, Any], dict]:
  """One optimiser step on the softmax cross-entropy. images: f32[B, H, W, 3] in [-1, 1];
  labels: int32[B] class indices."""
  x = preprocess(images, input_size)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                                  train=True, mutable=["batch_stats"])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"])
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  new_state = {"params": optax.apply_updates(state["params"], updates),
               "batch_stats": batch_stats, "opt_state": opt_state, "step": state["step"] + 1}
  return new_state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                     "grad_norm": optax.tree.norm(grads)}


def predict(model: ResNetClassifier, variables: dict[str, Any], images: np.ndarray,
            input_size: int, mesh: Mesh, chunk: int = 256) -> np.ndarray:
  """u8[N, H, W, 3] -> i64[N] predicted classes, in fixed-size chunks sharded over `mesh` (one
  compilation whatever N)."""
  return parallel.map_chunks(_sharded_predict(model, input_size, mesh), variables, images, mesh,
                             chunk)


@functools.cache
def _sharded_predict(model: ResNetClassifier, input_size: int, mesh: Mesh):
  return jax.jit(lambda variables, images: jnp.argmax(
      model.apply(variables, preprocess(images, input_size), train=False), axis=-1),
      out_shardings=parallel.replicated(mesh))


def _variables(state: dict[str, Any]) -> dict[str, Any]:
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def make_task(config: ml_collections.ConfigDict, workdir: str) -> training.Task:
  """The classifier's task: the encoder identities' training photos with their classes, the
  network, and the held-out top-1 accuracy."""
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  arrays, split = run_data.load_for_run(config.data, workdir)
  train_set, eval_set, classes = classifier_sets(arrays, split, config.eval_photos, config.seed)
  labels = np.searchsorted(classes, train_set.identity).astype(np.int32)
  eval_labels = np.searchsorted(classes, eval_set.identity)
  logging.info("classifier training: %d photos of %d identities; evaluation: %d held-out photos",
               len(train_set), len(classes), len(eval_set))
  model = classifiers.from_config(config.model, len(classes))
  optimizer = make_optimizer(config)
  step = functools.partial(train_step, model=model, optimizer=optimizer,
                           input_size=config.model.input_size)
  batches = Batches(train_set.images, global_batch_size=config.batch_size, seed=config.seed,
                    mirror=config.mirror, labels=labels)

  def held_out_metrics(state):
    predicted = predict(model, _variables(state), eval_set.images, config.model.input_size, mesh)
    return {"accuracy": float(np.mean(predicted == eval_labels)), "chance": 1.0 / len(classes)}

  return training.Task(
      kind=KIND,
      init=lambda _: init_state(model, optimizer, config.model.input_size,
                                init_key(config.seed)),
      phases=[training.Phase(
          "train", config.num_steps,
          lambda state, batch, _: step(state, batch["images"], batch["labels"]), batches.at)],
      meta={"classes": classes.tolist()}, evaluate=held_out_metrics,
      items_per_step=config.batch_size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> training.Result:
  """Trains (or resumes) in `workdir`; the result's metrics are the final held-out ones (also
  in eval.json)."""
  return training.run(lambda: make_task(config, workdir), config, workdir)
