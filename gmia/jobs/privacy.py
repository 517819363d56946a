"""Defences measured: target generators trained with person-level differential privacy at several
epsilons, the identity attack on each, an empirical epsilon from identity canaries, and the release
filter as a defence.

Every point trains the same generator recipe (`config.family`: `config.gan`, gmia.gan, or
`config.diffusion`, gmia.diffusion, each with its `privacy` block) on the split's members plus
canaries: the people of `canary_group` (the split's shadow identities,
whom neither the face encoder nor any target ever includes), each included independently with
probability 1/2 (seeded once, the same for every point). epsilon 0 stands for "no privacy": the
same recipe with DP off. Each generator is attacked with the same attack and matcher; included
canaries count as members, excluded ones as non-members. From the canaries' scores (the first
of `variants`) come two lower bounds on the run's epsilon (gmia.privacy.auditing): Steinke, Nasr
and Jagielski's one-run audit and the classic TPR / FPR bound with Clopper-Pearson intervals, to
set beside the accountant's epsilon, which they must never exceed.

The release filter (gmia.jobs.release_filter) is measured on the non-private point: for each
threshold, the attack on what the filter keeps, against the fraction of samples kept.

Workdir (every training and attack a stage, gmia.jobs.stages: a killed run resumes):
  split.json, canaries.json     the base split and which canaries each point trains on;
  points/eps_<e>/               split.json, gan/ or diffusion/ (the family's), attack/;
  filter/t_<threshold>/         filter/ (the kept samples), attack/;
  privacy.json, privacy.md, privacy.png (AUC and Frechet distance against epsilon),
  privacy_samples.png (a row of samples per epsilon), filter.png (AUC against samples kept).
"""

from __future__ import annotations

import copy
import os

import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from PIL import Image

from gmia import files, fingerprint, parallel, viz
from gmia.attacks import calibration
from gmia.attacks.samples import draw
from gmia.data import run_data
from gmia.data.split import GROUPS, IdentitySplit
from gmia.jobs import generators, membership, page_parts, pages, release_filter
from gmia.jobs.stages import run_stage
from gmia.privacy import auditing
from gmia.runs import load_run
from gmia.sources import open_source

REPORT_FILE = "privacy.json"
CANARIES_FILE = "canaries.json"
SAMPLES_PER_ROW = 8


def point_name(epsilon: float) -> str:
  return "eps_inf" if not epsilon else f"eps_{epsilon:g}"


def canary_split(split: IdentitySplit, canaries: np.ndarray, included: np.ndarray
                 ) -> IdentitySplit:
  """The split a point trains and attacks on: members and included canaries as members,
  non-members and excluded canaries as non-members."""
  groups = {g: np.zeros((0,), np.int64) for g in GROUPS}
  groups["members"] = np.sort(np.concatenate([split.identities("members"), canaries[included]]))
  groups["non_members"] = np.sort(np.concatenate([split.identities("non_members"),
                                                  canaries[~included]]))
  groups["encoder"] = split.identities("encoder")
  return IdentitySplit(seed=split.seed, groups=groups, train=split.train,
                       reference=split.reference)


def choose_canaries(split: IdentitySplit, config: ml_collections.ConfigDict
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(canaries i64[m], included bool[m]): the canary group's people, each included with
  probability 1/2 (seeded by config.seed)."""
  canaries = split.identities(config.canary_group)
  if config.num_canaries >= 0:
    canaries = canaries[:config.num_canaries]
  if len(canaries) < 2:
    raise ValueError(f"the split's {config.canary_group!r} group holds {len(canaries)} people: "
                     "canaries need at least 2")
  included = np.random.default_rng([config.seed, 2**24]).random(len(canaries)) < 0.5
  return canaries, included


def _pinned(path: str, payload: dict) -> None:
  if os.path.exists(path):
    if files.read_json(path) != files.strict_json(payload):
      raise ValueError(f"{path} holds another canary draw or split than the config asks for: "
                       "use a fresh workdir")
  else:
    files.write_json(path, payload)


def _audit(scores: calibration.AttackScores, canaries: np.ndarray, included: np.ndarray,
           variant: str, delta: float) -> dict:
  """The empirical epsilons from the canaries' scores."""
  row = {name: i for i, name in enumerate(scores.identity.tolist())}
  canary_scores = np.array([scores.scores[variant][row[str(c)]] for c in canaries.tolist()])
  one_run = auditing.one_run_epsilon(canary_scores, included, delta=delta,
                                     guesses=((1, 1), (2, 2), (4, 4), (len(canaries), 0)))
  threshold = auditing.threshold_epsilon(canary_scores, included, delta=delta)
  return {"one_run": one_run._asdict(), "threshold": threshold._asdict(),
          "canaries": int(len(canaries)), "included": int(included.sum())}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) every point and the filter curve; returns the contents of privacy.json."""
  if not config.face_encoder_workdir:
    raise ValueError("config.face_encoder_workdir is required: a face encoder that never saw a "
                     "target or a canary (e.g. the main job's)")
  if not config.epsilons or min(config.epsilons) < 0:
    raise ValueError(f"config.epsilons must list epsilons >= 0 (0: no privacy), got "
                     f"{config.epsilons}")
  family = generators.check(config.family)
  os.makedirs(workdir, exist_ok=True)
  arrays, split = run_data.load_for_run(config.data, workdir)
  canaries, included = choose_canaries(split, config)
  _pinned(os.path.join(workdir, CANARIES_FILE),
          {"canaries": canaries.tolist(), "included": included.tolist()})
  trained_split = canary_split(split, canaries, included)
  attack_config = copy.deepcopy(config.attack)
  attack_config.matcher.update(kind="gmia", path=config.face_encoder_workdir)
  variant = config.variants[0]
  points, samples = [], []
  for epsilon in config.epsilons:
    directory = os.path.join(workdir, "points", point_name(epsilon))
    split_path = os.path.join(directory, run_data.SPLIT_FILE)
    if not os.path.exists(split_path):
      trained_split.save(split_path)
    recipe = copy.deepcopy(config[family])
    recipe.data = copy.deepcopy(config.data)
    recipe.data.split.path = split_path
    recipe.train_group = "members"
    recipe.privacy.enabled = bool(epsilon)
    if epsilon:
      recipe.privacy.target_epsilon = float(epsilon)
    generator_dir = os.path.join(directory, family)
    attack_dir = os.path.join(directory, "attack")
    seconds = {family: run_stage(
        generator_dir, lambda: generators.train(family, recipe, generator_dir),
        f"{point_name(epsilon)} {family}")}
    attack = copy.deepcopy(attack_config)
    attack.update(generator="gmia:" + generator_dir, split_path=split_path,
                  title=f"generator at epsilon {epsilon:g}" if epsilon else "generator, no DP")
    seconds["attack"] = run_stage(attack_dir, lambda: membership.run(attack, attack_dir),
                                  f"{point_name(epsilon)} attack")
    points.append(_point(config, epsilon, generator_dir, attack_dir, canaries, included,
                         variant, seconds))
    samples.append(draw(open_source(attack), np.arange(SAMPLES_PER_ROW), parallel.make_mesh(),
                        SAMPLES_PER_ROW))
    found = points[-1]
    print(f"[{point_name(epsilon)}] {variant} {calibration.auc_text(found['metrics'][variant])}"
          f", one-run epsilon >= {found['audit']['one_run']['epsilon']:.2f}", flush=True)
  curve = _filter_curve(config, workdir, attack_config, os.path.join(
      workdir, "points", point_name(0.0), family), trained_split) if 0.0 in config.epsilons else []
  summary = {"points": points, "filter": curve, "variants": list(config.variants),
             "config": config.to_dict()}
  summary.update(privacy_extras(summary))
  seconds = sum(sum(point["seconds"].values()) for point in points)
  summary["provenance"] = page_parts.provenance(
      workdir, config, seconds, {"split": fingerprint.tree_digest(split.to_json()),
                                 "canaries": canaries.tolist(), "included": included.tolist()})
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  files.write_atomic(os.path.join(workdir, "privacy.md"), markdown_table(summary))
  save_figures(workdir, summary, np.stack(samples), [p["name"] for p in points])
  page_parts.write_page(workdir, privacy_page, summary, config.attack.report_photos)
  return summary


def privacy_extras(summary: dict) -> dict:
  """The page's verdict in words and its tables as flat rows (a non-private point has no
  privacy plan)."""
  summary = files.strict_json(summary)
  variant = summary["variants"][0]
  rows, sentences = [], []
  for point in summary["points"]:
    plan, quality = point["privacy"] or {}, point["sample_quality"] or {}
    metrics = point["metrics"][variant]
    rows.append({"epsilon": plan.get("epsilon"), "target_epsilon": point["target_epsilon"],
                 "noise_multiplier": plan.get("noise_multiplier"), "steps": plan.get("steps"),
                 "auc": metrics["auc"], "auc_interval": metrics["auc_interval"],
                 "one_run_epsilon": point["audit"]["one_run"]["epsilon"],
                 "threshold_epsilon": point["audit"]["threshold"]["epsilon"],
                 "frechet_distance": quality.get("frechet_distance"),
                 "near_copies": quality.get("near_copies"),
                 "minutes": sum(point["seconds"].values()) / 60})
    low, high = metrics["auc_interval"]
    where = page_parts.chance(low, high) + (
        ", inside the null band [0.4, 0.6]" if low is not None and 0.4 <= low and high <= 0.6
        else "")
    name = (f"at epsilon {plan['epsilon']:.3g}" if plan else "without privacy")
    sentences.append(f"{name}, the {variant} attack's AUC is {page_parts.fmt(metrics['auc'])} "
                     f"[{page_parts.fmt(low)}, {page_parts.fmt(high)}], {where}")
  exceeded = [row for row in rows if row["epsilon"] is not None and max(
      row["one_run_epsilon"] or 0, row["threshold_epsilon"] or 0) > row["epsilon"]]
  joined = "; ".join(sentences)
  verdict = (joined[:1].upper() + joined[1:] + ". " + (
      "The canaries' empirical epsilon exceeds the accountant's at "
      f"{len(exceeded)} point(s): the private training does not give its guarantee."
      if exceeded else "No canary bound exceeds the accountant's epsilon."))
  filter_rows = [{"threshold": row["threshold"], "fraction_kept": row["fraction_kept"],
                  "auc": row["metrics"][variant]["auc"] if row["metrics"] else None}
                 for row in summary["filter"]]
  return {"verdict": verdict, "rows": rows, "filter_rows": filter_rows}


def privacy_page(report: dict, workdir: str) -> pages.Page:
  columns = {"epsilon (target)": "target_epsilon", "epsilon (accountant)": "epsilon",
             "noise multiplier": "noise_multiplier", "steps": "steps", "AUC": "auc",
             "interval": "auc_interval", "one-run epsilon >=": "one_run_epsilon",
             "threshold epsilon >=": "threshold_epsilon", "Frechet distance": "frechet_distance",
             "near-copies": "near_copies", "minutes": "minutes"}
  sections = [pages.Section("Leakage and quality against epsilon", [
      *page_parts.figure(workdir, "privacy.png", "Attack AUC (with its interval) and the "
                         "Frechet distance to the training photos against epsilon"),
      pages.Table("rows", columns, caption=f"The {report['variants'][0]} attack at every point; "
                  "empirical epsilons are 95% lower bounds from the canaries"),
      *page_parts.figure(workdir, "privacy_samples.png", "Samples at each epsilon, a row each")])]
  if report["filter"]:
    sections.append(pages.Section("The release filter as a defence", [
        *page_parts.figure(workdir, "filter.png", "Attack AUC on what the filter keeps"),
        pages.Table("filter_rows", {"threshold": "threshold", "fraction kept": "fraction_kept",
                                    "AUC": "auc"})]))
  return pages.Page("Defences: leakage against person-level differential privacy", report,
                    ["verdict"], sections)


def _point(config, epsilon: float, generator_dir: str, attack_dir: str, canaries: np.ndarray,
           included: np.ndarray, variant: str, seconds: dict) -> dict:
  """One point's row: its privacy plan, every variant's AUC, the canary audit, quality."""
  report = files.read_json(os.path.join(attack_dir, membership.REPORT_FILE))
  scores = calibration.read_scores(attack_dir)
  plan = load_run(generator_dir, config.family).meta.get("privacy")
  delta = plan["delta"] if plan else config[config.family].privacy.delta
  return {"name": point_name(epsilon), "target_epsilon": epsilon or None, "privacy": plan,
          "metrics": report["metrics"], "audit": _audit(scores, canaries, included, variant, delta),
          "sample_quality": report["sample_quality"], "seconds": seconds}


def _filter_curve(config, workdir: str, attack_config: ml_collections.ConfigDict,
                  generator_dir: str, trained_split: IdentitySplit) -> list[dict]:
  """The attack on what the release filter keeps of the non-private generator, per threshold
  (metrics None where it keeps fewer samples than the attack's topk)."""
  split_path = os.path.join(workdir, "points", point_name(0.0), run_data.SPLIT_FILE)
  # What the filter keeps is a folder of images with no split: the attack on it reads the same
  # people's reference photos as identity folders.
  people_dir = os.path.join(workdir, "filter", "people")
  run_stage(people_dir, lambda: _export_people(config, trained_split, people_dir),
            "filter people")
  rows = []
  for threshold in config.filter_thresholds:
    directory = os.path.join(workdir, "filter", f"t_{threshold:g}")
    kept_dir, attack_dir = os.path.join(directory, "filter"), os.path.join(directory, "attack")
    filter_config = release_filter.default_config()
    filter_config.update({k: v for k, v in attack_config.items() if k in filter_config})
    filter_config.update(generator="gmia:" + generator_dir, split_path=split_path,
                         threshold=threshold,
                         num_samples=config.attack.num_samples)
    run_stage(kept_dir, lambda: release_filter.run(filter_config, kept_dir),
              f"filter {threshold:g}")
    result = files.read_json(os.path.join(kept_dir, release_filter.REPORT_FILE))
    row = {"threshold": threshold, "kept": result["kept"],
           "fraction_kept": result["kept"] / result["num_samples"], "metrics": None}
    if result["kept"] < max(attack_config.topk, 1):
      # Too few samples left to score a person's top-k: the filter leaves nothing to attack.
      rows.append(row)
      continue
    attack = copy.deepcopy(attack_config)
    attack.update(generator="images:" + os.path.join(kept_dir, "kept.npz"),
                  members_dir=os.path.join(people_dir, "members"),
                  population_dir=os.path.join(people_dir, "non_members"),
                  num_samples=result["kept"],
                  title=f"what the filter keeps at {threshold:g}")
    run_stage(attack_dir, lambda: membership.run(attack, attack_dir), f"filtered {threshold:g}")
    row["metrics"] = files.read_json(os.path.join(attack_dir, membership.REPORT_FILE))["metrics"]
    rows.append(row)
  return rows


def _export_people(config, split: IdentitySplit, directory: str) -> None:
  """The reference photos of the split's members and non-members as identity folders
  (directory/<group>/<identity>/<photo id>.png, lossless)."""
  arrays = run_data.load_dataset(config.data)
  for group in ("members", "non_members"):
    chosen = arrays.select(split.reference_photos(group))
    for image, identity, photo in zip(chosen.images, chosen.identity, chosen.photo_id):
      folder = os.path.join(directory, group, str(identity))
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(image).save(os.path.join(folder, f"{photo}.png"))


def markdown_table(summary: dict) -> str:
  """One row per epsilon; then the filter's rows."""
  variants = summary["variants"]
  header = ["epsilon (target)", "epsilon (accountant)", "noise multiplier", "clip norm",
            "steps", "sampling rate", *(f"AUC {v}" for v in variants), "one-run eps >=",
            "threshold eps >=", "Frechet distance", "near-copies", "minutes"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for point in summary["points"]:
    plan = point["privacy"] or {}
    quality = point["sample_quality"] or {}
    cells = [f"{point['target_epsilon']:g}" if point["target_epsilon"] else "inf (no DP)",
             f"{plan['epsilon']:.2f}" if plan else "-",
             f"{plan['noise_multiplier']:.2f}" if plan else "-",
             f"{plan['clip_norm']:g}" if plan else "-", str(plan.get("steps", "-")),
             f"{plan['sampling_rate']:.2f}" if plan else "-",
             *(calibration.auc_text(point["metrics"][v]).removeprefix("AUC ") for v in variants),
             f"{point['audit']['one_run']['epsilon']:.2f}",
             f"{point['audit']['threshold']['epsilon']:.2f}",
             f"{quality.get('frechet_distance', float('nan')):.3f}",
             str(quality.get("near_copies", "-")),
             f"{sum(point['seconds'].values()) / 60:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  if summary["filter"]:
    lines += ["", "| filter threshold | samples kept | " + " | ".join(
        f"AUC {v}" for v in variants) + " |", "|---|---|" + "---|" * len(variants)]
    for row in summary["filter"]:
      lines.append(f"| {row['threshold']:g} | {row['fraction_kept']:.1%} | " + " | ".join(
          calibration.auc_text(row["metrics"][v]).removeprefix("AUC ") if row["metrics"]
          else "too few samples kept" for v in variants) + " |")
  first = summary["points"][0]["metrics"][variants[0]]
  lines.append(f"\n{first['num_positives']} members (with the included canaries) vs "
               f"{first['num_negatives']} non-members; the empirical epsilons are lower bounds "
               "at 95% confidence from the canaries' scores; epsilon 0 in the config: no DP.\n")
  return "\n".join(lines)


def save_figures(workdir: str, summary: dict, samples: np.ndarray, names: list[str]) -> None:
  """privacy.png, privacy_samples.png and (with a filter curve) filter.png."""
  variant = summary["variants"][0]
  points = summary["points"]
  labels = [p["name"].removeprefix("eps_") for p in points]
  figure, (leak, fid) = plt.subplots(1, 2, figsize=(10, 4))
  auc = np.array([p["metrics"][variant]["auc"] for p in points])
  interval = np.array([p["metrics"][variant]["auc_interval"] for p in points])
  x = np.arange(len(points))
  leak.errorbar(x, auc, yerr=[auc - interval[:, 0], interval[:, 1] - auc], marker="o", capsize=3)
  leak.axhspan(0.4, 0.6, color="grey", alpha=0.15, lw=0, label="null band")
  leak.set_ylabel(f"attack AUC ({variant})")
  leak.set_ylim(0, 1)
  fid.plot(x, [(p["sample_quality"] or {}).get("frechet_distance", np.nan) for p in points],
           marker="o")
  fid.set_ylabel("Frechet distance to the training photos\n(face encoder's space)")
  for axes in (leak, fid):
    axes.set_xticks(x, labels)
    axes.set_xlabel("epsilon (person-level DP)")
    axes.grid(alpha=0.3)
  leak.legend()
  figure.tight_layout()
  viz.save_figure(os.path.join(workdir, "privacy.png"), figure)
  viz.save_grid(os.path.join(workdir, "privacy_samples.png"),
                samples.reshape(-1, *samples.shape[2:]), ncols=samples.shape[1], labels=[n for n in names for _ in range(samples.shape[1])],
                upscale=max(1, 64 // samples.shape[2]))
  if summary["filter"]:
    figure, axes = plt.subplots(figsize=(5, 4))
    attacked = [row for row in summary["filter"] if row["metrics"]]
    axes.plot([row["fraction_kept"] for row in attacked],
              [row["metrics"][variant]["auc"] for row in attacked], marker="o")
    axes.set_xlabel("fraction of samples the filter keeps")
    axes.set_ylabel(f"attack AUC on what it keeps ({variant})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    viz.save_figure(os.path.join(workdir, "filter.png"), figure)
