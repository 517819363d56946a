"""Feature inversion of a split encoder as a job: victims' photos -> features per layer -> images.

For each split layer, the victims' features are inverted by optimisation (gmia.inversion.features)
and scored against the originals: PSNR, SSIM, identity similarity (encoder cosine between
reconstruction and original) and whether the encoder still names the right victim (rank-1 among
the victims' original embeddings). Writes report.json, table.md and inversions.png
(original | reconstruction per layer).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmia import files, metrics, viz
from gmia.data import run_data
from gmia.encoder import trainer as encoder_trainer
from gmia.encoder.embed import embed, input_size, preprocess
from gmia.inversion import features

REPORT_FILE = "report.json"


def default_config() -> ml_collections.ConfigDict:
  """Every option of the job; attack/configs/invert_features.py returns it."""
  return ml_collections.ConfigDict({
      "encoder_workdir": "",            # Workdir of train/train_arcface.py (required).
      "data": run_data.default_config(),  # Where the victims' photos come from.
      "victim_group": "non_members",    # Identities of the split the encoder never saw.
      "num_victims": 8,                 # One photo each.
      "layers": ("stem", "stage1", "stage2"),
      "seed": 0,
      "inversion": {f.name: f.default for f in dataclasses.fields(
          features.FeatureInversionSettings) if f.name != "layer"},
  })


def evaluate(model, variables, originals: jax.Array, reconstructions: jax.Array) -> dict:
  """Per-image PSNR, SSIM, identity cosine and rank-1 identification among the originals, for
  f32[B, S, S, 3] in [-1, 1] at the encoder's input size."""
  a, b = embed(model, variables, originals), embed(model, variables, reconstructions)
  cosine = jnp.sum(a * b, axis=-1)
  return {"psnr": np.asarray(metrics.psnr(reconstructions, originals)),
          "ssim": np.asarray(metrics.ssim(reconstructions, originals)),
          "identity_cosine": np.asarray(cosine),
          "identified": np.asarray(jnp.argmax(b @ a.T, axis=-1) == jnp.arange(len(a)))}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Inverts the victims' features at every configured layer and writes the report files."""
  if not config.encoder_workdir:
    raise ValueError("config.encoder_workdir is required: the encoder to split")
  started = time.perf_counter()
  model, variables = encoder_trainer.load_encoder(config.encoder_workdir)
  arrays = run_data.load_dataset(config.data)
  split = run_data.split_for(config.data, arrays)
  photos = np.concatenate([split.train_photos(config.victim_group),
                           split.reference_photos(config.victim_group)])
  chosen = arrays.select(photos)
  # One photo per victim identity, the first of each.
  _, first = np.unique(chosen.identity, return_index=True)
  first = np.sort(first)[:config.num_victims]
  if not len(first):
    raise ValueError(f"no photos of group {config.victim_group!r} in the split")
  originals = preprocess(jnp.asarray(chosen.images[first]), input_size(model, variables))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(
      jnp.arange(len(first)))
  rows, results = [originals], {}
  for layer in config.layers:
    settings = features.FeatureInversionSettings(layer=layer, **config.inversion)
    observed = model.apply(variables, originals, train=False, capture=(layer,))[layer]
    out = features.make_feature_inverter(model, settings)(variables, observed, keys)
    scores = evaluate(model, variables, originals, out["images"])
    results[layer] = {name: float(np.mean(v)) for name, v in scores.items()}
    results[layer]["per_victim"] = {name: v.tolist() for name, v in scores.items()}
    rows.append(out["images"])
  table = ["| layer | PSNR (dB) | SSIM | identity cosine | identified |", "|---|---|---|---|---|"]
  table += [f"| {layer} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['identity_cosine']:.3f} | "
            f"{r['identified']:.0%} |" for layer, r in results.items()]
  os.makedirs(workdir, exist_ok=True)
  files.write_atomic(os.path.join(workdir, "table.md"), "\n".join(table) + "\n")
  grid = np.stack([np.asarray(r) for r in rows], axis=1)
  viz.save_grid(os.path.join(workdir, "inversions.png"), grid.reshape(-1, *grid.shape[2:]),
                ncols=grid.shape[1], labels=["original", *config.layers] * len(first),
                upscale=max(1, 96 // grid.shape[2]))
  summary = {"layers": results, "num_victims": int(len(first)), "config": config.to_dict(),
             "seconds": time.perf_counter() - started}
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  return summary
