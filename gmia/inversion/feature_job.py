"""Feature inversion of a split network as a job: the results table of every layer and method.

For each split layer the victims' features (held-out identities, one photo each) are inverted by
each chosen method and scored against the originals: PSNR, SSIM, identity similarity (the face
encoder's cosine between reconstruction and original) and whether the encoder still names the
right victim (rank-1 among the victims' original embeddings). Methods:

  optimisation       pixels optimised against the features with image priors (features.py);
  generator_prior    the same, with the image drawn by a StyleGAN2 generator, G(w), optimised in w;
  aux_decoder        a decoder trained on photos of other identities (train/train_decoder.py,
                     method "aux"), one forward pass;
  zero_shot_decoder  a decoder trained without any real photo, block by block on synthesised
                     inputs and re-synced by cycle consistency (method "zero_shot").

Writes report.json, table.md (layer x method) and inversions.png (a victim per row: the original,
then every layer and method).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmia import files, metrics, viz
from gmia.data import run_data
from gmia.face_encoder import trainer as encoder_trainer
from gmia.face_encoder.embed import embed, preprocess
from gmia.gan import sampling
from gmia.inversion import decoding, features, networks
from gmia.models.split import Network

REPORT_FILE = "report.json"
METHODS = ("optimisation", "generator_prior", "aux_decoder", "zero_shot_decoder")
# Method -> the config field naming the model it needs besides the split network.
NEEDS = {"generator_prior": "generator_workdir", "aux_decoder": "aux_decoder_workdir",
         "zero_shot_decoder": "zero_shot_decoder_workdir"}

Inverter = Callable[[str, jax.Array], jax.Array]  # (layer, features f32[B, ...]) -> images


def default_config() -> ml_collections.ConfigDict:
  """Every option of the job; attack/configs/invert_features.py returns it."""
  return ml_collections.ConfigDict({
      "encoder_workdir": "",            # Face encoder of train/train_face_encoder.py (required).
      # The split network: kind "face_encoder" or "classifier" (train/train_classifier.py); an
      # empty workdir splits the face encoder itself.
      "network": {"kind": "face_encoder", "workdir": ""},
      "data": run_data.default_config(),  # Where the victims' photos come from.
      "victim_group": "non_members",    # Identities of the split the networks never saw.
      "num_victims": 8,                 # One photo each.
      "layers": ("stem", "stage1", "stage2"),
      "methods": ("optimisation",),     # Any of METHODS.
      "generator_workdir": "",          # generator_prior: a train/train_gan.py workdir.
      "aux_decoder_workdir": "",        # aux_decoder: a train/train_decoder.py workdir.
      "zero_shot_decoder_workdir": "",  # zero_shot_decoder: likewise.
      "seed": 0,
      "inversion": {f.name: f.default for f in dataclasses.fields(
          features.FeatureInversionSettings) if f.name != "layer"},
  })


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the first missing or unknown setting."""
  if not config.encoder_workdir:
    raise ValueError("config.encoder_workdir is required: the face encoder that scores identity")
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown or not config.methods:
    raise ValueError(f"unknown or no methods {list(config.methods)}; choose from {METHODS}")
  for method in config.methods:
    if method in NEEDS and not config[NEEDS[method]]:
      raise ValueError(f"method {method!r} needs config.{NEEDS[method]}")
  if config.num_victims < 1:
    raise ValueError(f"num_victims must be positive, got {config.num_victims}")


def evaluate(model, variables, originals: jax.Array, reconstructions: jax.Array) -> dict:
  """Per-image PSNR, SSIM, identity cosine and rank-1 identification among the originals, for
  f32[B, S, S, 3] in [-1, 1] (the encoder resizes both to its own input size)."""
  a, b = embed(model, variables, originals), embed(model, variables, reconstructions)
  cosine = jnp.sum(a * b, axis=-1)
  return {"psnr": np.asarray(metrics.psnr(reconstructions, originals)),
          "ssim": np.asarray(metrics.ssim(reconstructions, originals)),
          "identity_cosine": np.asarray(cosine),
          "identified": np.asarray(jnp.argmax(b @ a.T, axis=-1) == jnp.arange(len(a)))}


def _victims(config: ml_collections.ConfigDict, size: int) -> jax.Array:
  """f32[V, size, size, 3] in [-1, 1]: the first photo of each of the first num_victims
  identities of the victim group."""
  arrays = run_data.load_dataset(config.data)
  split = run_data.split_for(config.data, arrays)
  chosen = arrays.select(np.concatenate([split.train_photos(config.victim_group),
                                         split.reference_photos(config.victim_group)]))
  _, first = np.unique(chosen.identity, return_index=True)
  first = np.sort(first)[:config.num_victims]
  if not len(first):
    raise ValueError(f"no photos of group {config.victim_group!r} in the split")
  return preprocess(jnp.asarray(chosen.images[first]), size)


def _inverter(method: str, config: ml_collections.ConfigDict,
              network: Network, keys: jax.Array) -> Inverter:
  """The function that inverts one layer's features by `method`."""
  if method in ("aux_decoder", "zero_shot_decoder"):
    workdir = config[NEEDS[method]]

    def decode(layer, observed):
      decoder, variables, meta = decoding.load_decoder(workdir, layer)
      if meta["image_size"] != network.image_size:
        raise ValueError(f"the decoder in {workdir} outputs {meta['image_size']} px images, the "
                         f"split network reads {network.image_size} px: another network?")
      return decoding.decode(decoder, variables, observed)

    return decode
  generator = g_vars = None
  if method == "generator_prior":
    generator, g_vars, _ = sampling.load_generator(config.generator_workdir)

  def optimise(layer, observed):
    settings = features.FeatureInversionSettings(layer=layer, **config.inversion)
    invert = features.make_feature_inverter(network.model, settings,
                                            input_size=network.image_size, generator=generator)
    return invert(network.variables, observed, keys, g_vars)["images"]

  return optimise


def _table(results: dict) -> str:
  lines = ["| layer | method | PSNR (dB) | SSIM | identity cosine | identified |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {layer} | {method} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['identity_cosine']:.3f} | {r['identified']:.0%} |"
            for layer, by_method in results.items() for method, r in by_method.items()]
  return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Inverts the victims' features at every layer by every method; writes the report files."""
  check_config(config)
  started = time.perf_counter()
  encoder, encoder_vars = encoder_trainer.load_encoder(config.encoder_workdir)
  network_config = ml_collections.ConfigDict(config.network.to_dict())
  if not network_config.workdir:
    network_config.update(kind="face_encoder", workdir=config.encoder_workdir)
  network = networks.load_network(network_config)
  originals = _victims(config, network.image_size)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(
      jnp.arange(len(originals)))
  inverters = {method: _inverter(method, config, network, keys) for method in config.methods}
  observed = network.model.apply(network.variables, originals, train=False,
                                 capture=tuple(config.layers))
  columns, labels, results = [originals], ["original"], {}
  for layer in config.layers:
    results[layer] = {}
    for method, invert in inverters.items():
      images = invert(layer, observed[layer])
      scores = evaluate(encoder, encoder_vars, originals, images)
      results[layer][method] = {name: float(np.mean(v)) for name, v in scores.items()}
      results[layer][method]["per_victim"] = {name: v.tolist() for name, v in scores.items()}
      columns.append(images)
      labels.append(f"{layer} {method.split('_')[0]}")
      print(f"[{layer}] {method}: PSNR {results[layer][method]['psnr']:.2f} dB, identity cosine "
            f"{results[layer][method]['identity_cosine']:.3f}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  files.write_atomic(os.path.join(workdir, "table.md"), _table(results))
  grid = np.stack([np.asarray(c) for c in columns], axis=1)
  viz.save_grid(os.path.join(workdir, "inversions.png"), grid.reshape(-1, *grid.shape[2:]),
                ncols=grid.shape[1], labels=labels * len(originals),
                upscale=max(1, 96 // grid.shape[2]))
  summary = {"results": results, "num_victims": int(len(originals)), "config": config.to_dict(),
             "seconds": time.perf_counter() - started}
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  return summary
