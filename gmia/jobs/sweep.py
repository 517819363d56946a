"""Leakage against the size of the training set: target generators over a grid, one attack.

Each point of the grid (generator family x members x training photos per member x training
steps, optionally with a few over-represented members) trains its own target generator (a
StyleGAN2, `config.gan`, or a DDPM, `config.diffusion`: gmia.jobs.generators) on its members'
photos; the
identity membership attack (gmia.attacks.membership) scores every one with the same encoder,
sample budget and seed (a DDPM also with the gray-box `denoising` score; a variant a family has
no score for reads "-" at its points). A control generator of each family, trained on people who
are no target of any point, is attacked with the references of every member count: its AUC is
the band chance spans there.

Points come from the data config's own split fields: a point with M members and P photos is
`data.split.members = M`, `data.split.max_train_photos = P`. The split's random order of
identities does not depend on them, so the M members are the first M of the base split (the
grid's most members), the non-members the next people in that order, and every point's people
are people of the base split; the encoder trains on the base split's other identities and the
control on its shadow identities, so neither ever saw a target of any point.

Workdir (every stage runs behind gmia.jobs.stages' marker recording its wall time: a killed sweep
resumes at the stage it was in, and a finished one only redraws its tables):
  split.json                the base split;
  face_encoder/, <family>_control/  trained here unless config.face_encoder_workdir /
                            control_workdir (a control of its own family, reused for it);
  points/<name>/            split.json, <family>/, attack/, exposure.csv, exposure.png;
  control/members_<M>[_<family>]/  the family's control attacked with the M-member points' people;
A GAN point's name and control folder carry no family suffix (the sweep's folders before it had a
family axis).
  sweep.json, sweep.md, sweep.png, report.html (linking every point's attack page).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from gmia import files, fingerprint, viz
from gmia.attacks import calibration, exposure
from gmia.jobs import generators, membership, page_parts, pages, shadows as shadows_lib
from gmia.jobs.stages import run_stage
from gmia.runs import load_run
from gmia.data import run_data
from gmia.data import split as split_lib
from gmia.data.split import IdentitySplit
from gmia.face_encoder import trainer as encoder_trainer

SWEEP_FILE = "sweep.json"
# A variant's report for a point whose family has no such score (the gray box of a GAN).
NOT_SCORED = {"auc": None, "auc_interval": [None, None], "tpr_at_fpr": []}


@dataclasses.dataclass(frozen=True)
class Point:
  """One target generator of `family`: `members` people with up to `photos` training photos
  each, trained for `steps`; `overrepresented` of the members with up to
  `overrepresented_photos` (-1: all)."""

  members: int
  photos: int
  steps: int
  overrepresented: int = 0
  overrepresented_photos: int = -1
  family: str = "gan"

  @property
  def name(self) -> str:
    extra = (f"_over{self.overrepresented}x{self.overrepresented_text}"
             if self.overrepresented else "")
    return f"m{self.members}_p{self.photos}_s{self.steps}{extra}{self.family_suffix}"

  @property
  def family_suffix(self) -> str:
    return "" if self.family == "gan" else f"_{self.family}"

  @property
  def control_name(self) -> str:
    """The folder under control/ of the family's control attacked with this point's people."""
    return f"members_{self.members}{self.family_suffix}"

  @property
  def overrepresented_text(self) -> str:
    photos = self.overrepresented_photos
    return "all" if photos < 0 else str(photos)


def grid_points(config: ml_collections.ConfigDict) -> list[Point]:
  """The points of config.grid (families x members x photos x steps; no steps: each family's
  num_steps)."""
  grid = config.grid
  families = tuple(generators.check(f) for f in grid.families)
  if not families or len(set(families)) < len(families):
    raise ValueError(f"config.grid.families must list distinct families, got {families}")
  values = {"members": tuple(grid.members), "photos": tuple(grid.photos),
            "steps": tuple(grid.steps) or (1,)}
  for name, chosen in values.items():
    if not chosen or min(chosen) < 1:
      raise ValueError(f"config.grid.{name} must list positive counts, got {chosen}")
  if grid.overrepresented and grid.overrepresented > min(grid.members):
    raise ValueError(f"config.grid.overrepresented ({grid.overrepresented}) exceeds the fewest "
                     f"members of the grid ({min(grid.members)})")
  return [Point(m, p, s if grid.steps else config[f].num_steps, grid.overrepresented,
                grid.overrepresented_photos, f)
          for f in families for m, p, s in itertools.product(*values.values())]


def point_split(config: ml_collections.ConfigDict, arrays, point: Point) -> IdentitySplit:
  """The identity split of `point`, from the data config's split fields."""
  data = copy.deepcopy(config.data)
  data.split.update(members=point.members, max_train_photos=point.photos)
  split = run_data.split_for(data, arrays)
  if point.overrepresented:
    photos = point.overrepresented_photos
    split = split_lib.overrepresent(split, arrays, count=point.overrepresented,
                                    max_train_photos=None if photos < 0 else photos)
  return split


def _pinned(split: IdentitySplit, path: str) -> str:
  """Saves `split` to `path`, or checks that the one there is the same; returns the path."""
  if os.path.exists(path):
    if IdentitySplit.load(path).to_json() != split.to_json():
      raise ValueError(f"{path} holds another split than the config asks for: use a fresh workdir")
  else:
    split.save(path)
  return path


def _check_unseen(trained_on: np.ndarray, people: np.ndarray, what: str) -> None:
  seen = np.intersect1d(trained_on, people)
  if len(seen):
    raise ValueError(f"{what} trained on {len(seen)} people of this sweep (e.g. identity "
                     f"{int(seen[0])}): use one trained on other people")


def _trainer_config(sub_config, data, **fields) -> ml_collections.ConfigDict:
  sub_config = copy.deepcopy(sub_config)
  sub_config.data = data
  sub_config.update(fields)
  return sub_config


def _attack_config(config, encoder_workdir: str) -> ml_collections.ConfigDict:
  """The sweep's attack settings with its face encoder as the matcher."""
  attack = copy.deepcopy(config.attack)
  attack.matcher.update(kind="gmia", path=encoder_workdir)
  return attack


def _attack(config, generator_workdir: str, encoder_workdir: str, split_path: str, title: str,
            workdir: str) -> float:
  attack = _attack_config(config, encoder_workdir)
  attack.update(generator="gmia:" + generator_workdir, split_path=split_path, title=title)
  return run_stage(workdir, lambda: membership.run(attack, workdir))


def _check_variants(config: ml_collections.ConfigDict, points: list[Point]) -> None:
  """ValueError unless config.variants name scores the attack gives for some point's family,
  the first (which ranks the people and states the verdict) for every family."""
  families = list(dict.fromkeys(point.family for point in points))
  shadows = bool(config.shadows.num_shadows)
  known = {family: calibration.variant_names(generators.ATTACK_VARIANTS[family], shadows=shadows)
           for family in families}
  every = list(dict.fromkeys(v for names in known.values() for v in names))
  unknown = sorted(set(config.variants) - set(every))
  if not config.variants or unknown:
    raise ValueError(f"config.variants must name known variants, got {unknown or '()'}; "
                     f"known: {every}")
  lacking = [family for family in families if config.variants[0] not in known[family]]
  if lacking:
    raise ValueError(f"config.variants[0]={config.variants[0]!r} ranks every point's people, but "
                     f"{' and '.join(lacking)} generators have no such score; name first a "
                     "variant every family has")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the sweep in `workdir`; returns the contents of sweep.json but their
  provenance."""
  points = grid_points(config)
  _check_variants(config, points)
  os.makedirs(workdir, exist_ok=True)
  base_data = copy.deepcopy(config.data)
  base_data.split.members = max(p.members for p in points)
  arrays, base = run_data.load_for_run(base_data, workdir)
  base_data.split.path = os.path.join(workdir, run_data.SPLIT_FILE)
  targets = np.concatenate([base.identities(g) for g in ("members", "non_members")])
  seconds = {}

  encoder_workdir = config.face_encoder_workdir or os.path.join(workdir, "face_encoder")
  if config.face_encoder_workdir:
    encoder_split = IdentitySplit.load(os.path.join(encoder_workdir, run_data.SPLIT_FILE))
    _check_unseen(encoder_split.identities("encoder"), np.concatenate(
        [targets, base.identities("shadow")]), f"the encoder in {encoder_workdir}")
  else:
    seconds["face_encoder"] = run_stage(encoder_workdir, lambda: encoder_trainer.train_and_evaluate(
        _trainer_config(config.face_encoder, base_data), encoder_workdir))
  controls = {}
  reused = load_run(config.control_workdir) if config.control_workdir else None
  if reused is not None and reused.kind not in {point.family for point in points}:
    raise ValueError(f"config.control_workdir={config.control_workdir} holds a {reused.kind} "
                     f"run; the grid's families are {tuple(config.grid.families)}")
  for family in dict.fromkeys(point.family for point in points):
    if reused is not None and reused.kind == family:
      controls[family] = config.control_workdir
      control_split = IdentitySplit.load(os.path.join(config.control_workdir,
                                                      run_data.SPLIT_FILE))
      _check_unseen(control_split.identities(reused.config.train_group), targets,
                    f"the control generator in {config.control_workdir}")
      continue
    controls[family] = os.path.join(workdir, f"{family}_control")
    seconds[f"{family}_control"] = run_stage(controls[family], lambda: generators.train(
        family, _trainer_config(config[family], base_data, train_group="shadow"),
        controls[family]))

  population = calibration.Population(encoder_workdir, arrays)
  results = []
  for point in points:
    directory = os.path.join(workdir, "points", point.name)
    split = point_split(config, arrays, point)
    split_path = _pinned(split, os.path.join(directory, run_data.SPLIT_FILE))
    data = copy.deepcopy(config.data)
    data.split.path = split_path
    generator_dir = os.path.join(directory, point.family)
    attack_dir = os.path.join(directory, "attack")
    recipe = _trainer_config(config[point.family], data, num_steps=point.steps)
    point_seconds = {point.family: run_stage(generator_dir, lambda: generators.train(
        point.family, _trainer_config(recipe, data, train_group="members"), generator_dir))}
    point_seconds["attack"] = _attack(config, generator_dir, encoder_workdir, split_path,
                                      f"target generator {point.name}", attack_dir)
    if config.shadows.num_shadows:
      point_seconds.update(shadows_lib.train_and_attack(
          os.path.join(directory, "shadows"), split=split, split_path=split_path, data=data,
          family=point.family, generator=recipe, attack=_attack_config(config, encoder_workdir),
          shadows=config.shadows))
    control_dir = os.path.join(workdir, "control", point.control_name)
    seconds[f"control_attack_{point.control_name}"] = _attack(
        config, controls[point.family], encoder_workdir, split_path,
        f"{point.family} control generator, people of {point.members}-member points",
        control_dir)
    results.append(_analyse(config, point, split, directory, attack_dir, control_dir,
                            population, point_seconds))
    first = results[-1]["metrics"][config.variants[0]]
    print(f"[{point.name}] {config.variants[0]} {calibration.auc_text(first)}", flush=True)

  summary = {"points": results, "seconds": seconds, "variants": list(config.variants),
             "total_seconds": sum(seconds.values()) + sum(
                 sum(r["seconds"].values()) for r in results),
             "config": config.to_dict()}
  summary.update(sweep_extras(summary))
  # The files also say where the result came from, and when: a cached rerun returns the same
  # summary but not the same date.
  inputs = {"split": fingerprint.tree_digest(base.to_json())}
  report = {**summary, "provenance": page_parts.provenance(workdir, config,
                                                              summary["total_seconds"], inputs)}
  files.write_json(os.path.join(workdir, SWEEP_FILE), report)
  files.write_atomic(os.path.join(workdir, "sweep.md"), markdown_table(summary))
  save_sweep_figure(os.path.join(workdir, "sweep.png"), summary)
  page_parts.write_page(workdir, sweep_page, report,
                           config.attack.report_photos)
  return summary


def _analyse(config, point: Point, split: IdentitySplit, directory: str, attack_dir: str,
             control_dir: str, population: calibration.Population, seconds: dict) -> dict:
  """Every variant's report for the point's target and control, and its exposure table."""
  target = calibration.read_scores(attack_dir)
  control = calibration.read_scores(control_dir).aligned_to(target)
  typical = population(split, target.identity)
  options = {"num_resamples": config.attack.bootstrap_resamples, "seed": config.attack.seed}
  shadows = (shadows_lib.read_shadows(os.path.join(directory, "shadows"), target)
             if config.shadows.num_shadows else None)
  target_scores = calibration.variant_scores(target, reference=control, population=typical,
                                             shadows=shadows)
  control_scores = calibration.variant_scores(control, population=typical, shadows=shadows)
  photos = np.array([len(split.train[int(i)]) if member else 0
                     for i, member in zip(target.identity.tolist(), target.is_member)])
  table = exposure.exposure_table(target.identity, target.is_member, photos,
                                  target_scores[config.variants[0]])
  files.write_csv(os.path.join(directory, "exposure.csv"), {
      k: (np.round(v, 6) if v.dtype.kind == "f" else v).tolist() for k, v in table.items()})
  exposure.save_exposure_figure(os.path.join(directory, "exposure.png"), table,
                                f"{point.name}: {config.variants[0]} score by photos in training")
  def reports(scores: dict, is_member: np.ndarray) -> dict:
    found = calibration.variant_reports(scores, is_member, **options)
    return {**found, **{v: NOT_SCORED for v in config.variants if v not in found}}

  return {**dataclasses.asdict(point), "name": point.name, "control_name": point.control_name,
          "overrepresented_text": point.overrepresented_text,
          "training_photos": int(split.train_photos("members").size),
          "metrics": reports(target_scores, target.is_member),
          "control": reports(control_scores, control.is_member),
          "exposure": exposure.group_summary(table, **options), "seconds": seconds}


def sweep_extras(report: Mapping[str, Any]) -> dict[str, Any]:
  """The sweep's verdict: how far the first variant's AUC moves over the points, against the
  control generator's."""
  report = files.strict_json(report)  # NaN as null, as report.json holds it.
  variant, points = report["variants"][0], report["points"]
  aucs = [(point["metrics"][variant]["auc"], point["name"]) for point in points
          if point["metrics"][variant]["auc"] is not None]
  if not aucs:
    return {"verdict": f"No point has a defined {variant} AUC."}
  low, high = min(aucs), max(aucs)
  text = (f"Over {len(points)} target generators the {variant} attack's AUC runs from "
          f"{page_parts.fmt(low[0])} ({low[1]}) to {page_parts.fmt(high[0])} ({high[1]}).")
  controls = [(point, point["control"][variant]) for point in points
              if point["control"].get(variant, {}).get("auc") is not None]
  if controls:
    beyond = sum(page_parts.above(point["metrics"][variant]["auc_interval"][0],
                                  control["auc_interval"][1])
                 for point, control in controls)
    control_aucs = [control["auc"] for _, control in controls]
    text += (f" The control generator, which saw none of their people, gives "
             f"{page_parts.fmt(min(control_aucs))} to {page_parts.fmt(max(control_aucs))}; "
             f"{beyond} of {len(controls)} "
             "targets' intervals lie above the control's.")
  return {"verdict": text}


def sweep_page(report: Mapping[str, Any], workdir: str) -> pages.Page:
  points = report["points"]
  columns = {"point": "name", "family": "family", "members": "members",
             "photos / member": "photos", "training photos": "training_photos", "steps": "steps"}
  for variant in report["variants"]:
    columns[f"AUC {variant}"] = f"metrics.{variant}.auc"
    columns[f"interval {variant}"] = f"metrics.{variant}.auc_interval"
    if all(variant in point["control"] for point in points):
      columns[f"control {variant}"] = f"control.{variant}.auc"
  links = []
  for point in points:
    links.append(pages.Link(f"{point['name']}: the attack on its target generator",
                            f"points/{point['name']}/attack/{page_parts.PAGE_FILE}"))
  for name, point in {point["control_name"]: point for point in points}.items():
    links.append(pages.Link(f"the {point['family']} control generator attacked with the "
                            f"{point['members']}-member points' people",
                            f"control/{name}/{page_parts.PAGE_FILE}"))
  return pages.Page("Leakage against the size of the training set", report, ["verdict"], [
      pages.Section("AUC by point", [
          *page_parts.figure(workdir, "sweep.png", "AUC (with its interval) against training "
                             "photos per member, one line per member count; bands: the control "
                             "generator's interval"),
          pages.Table("points", columns, caption="Every point of the grid")]),
      pages.Section("Each point's attack", links),
      pages.Section("Time", [pages.Number("seconds in all", "total_seconds",
                                          note="training and attacks of every stage")])])


def markdown_table(summary: dict) -> str:
  """One row per point: its size, each variant's AUC with interval (target, then control)."""
  variants = summary["variants"]
  families = len({point["family"] for point in summary["points"]}) > 1
  header = ["family"] * families + ["members", "photos / member", "training photos", "steps"]
  for variant in variants:
    header += [f"AUC {variant}", f"control {variant}"]
  header += ["TPR@1% " + variants[0], "minutes"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for point in summary["points"]:
    members = str(point["members"]) + (
        f" ({point['overrepresented']} with {point['overrepresented_text']})"
        if point["overrepresented"] else "")
    cells = [point["family"]] * families + [members, str(point["photos"]),
                                            str(point["training_photos"]), str(point["steps"])]
    for variant in variants:
      for result in (point["metrics"][variant], point["control"].get(variant)):
        scored = result is not None and result["auc"] is not None
        cells.append(calibration.auc_text(result).removeprefix("AUC ") if scored else "-")
    tpr = next(r for r in point["metrics"][variants[0]]["tpr_at_fpr"] if r["fpr"] == 1e-2)
    cells += [f"{tpr['tpr']:.2f}" + ("" if tpr["resolved"] else "*"),
              f"{sum(point['seconds'].values()) / 60:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  first = summary["points"][0]["metrics"][variants[0]]
  lines.append(f"\n{first['num_negatives']} non-members per point; control: the control "
               "generator attacked with the same people; minutes: training + attack of the "
               f"point. Whole sweep: {summary['total_seconds'] / 60:.0f} min.\n")
  return "\n".join(lines)


def save_sweep_figure(path: str, summary: dict) -> None:
  """AUC (with interval) against photos per member, one line per member count (and steps and
  family), the control's AUC interval as a band of the line's colour; one panel per variant."""
  variants = summary["variants"]
  figure, panels = plt.subplots(1, len(variants), figsize=(5.2 * len(variants), 4.2),
                                squeeze=False)
  def line_of(point: dict) -> tuple:
    return point["family"], point["members"], point["steps"], point["overrepresented"]

  lines = sorted({line_of(p) for p in summary["points"]})
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for axes, variant in zip(panels[0], variants):
    for colour, key in zip(itertools.cycle(colours), lines):
      points = sorted((p for p in summary["points"]
                       if line_of(p) == key and p["metrics"][variant]["auc"] is not None),
                      key=lambda p: p["photos"])
      if not points:
        continue
      x = np.array([p["photos"] for p in points], np.float64)
      auc = np.array([p["metrics"][variant]["auc"] for p in points])
      interval = np.array([p["metrics"][variant]["auc_interval"] for p in points])
      family, members, steps, over = key
      label = ((f"{family}, " if len({k[0] for k in lines}) > 1 else "") + f"{members} members"
               + (f", {steps} steps" if len({k[2] for k in lines}) > 1 else "")
               + (f", {over} over-represented" if over else ""))
      axes.errorbar(x, auc, yerr=[auc - interval[:, 0], interval[:, 1] - auc], color=colour,
                    marker="o", capsize=3, label=label)
      control = points[0]["control"].get(variant)
      if control and control["auc"] is not None:
        low, high = control["auc_interval"]
        span = [x.min() / 1.15, x.max() * 1.15]
        axes.fill_between(span, [low] * 2, [high] * 2, color=colour, alpha=0.12, lw=0)
    axes.axhline(0.5, color="grey", linestyle=":", lw=1)
    axes.set_xscale("log")
    photos = sorted({p["photos"] for p in summary["points"]})
    axes.set_xticks(photos, [str(p) for p in photos])
    axes.minorticks_off()
    axes.set_xlabel("training photos per member")
    axes.set_ylabel(f"AUC ({variant})")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.set_title(f"{variant}; bands: control generator's 95% interval", fontsize=9)
  panels[0][0].legend(fontsize=8, loc="lower left")
  figure.tight_layout()
  viz.save_figure(path, figure)
