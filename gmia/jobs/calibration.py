"""Every score variant measured on the main job, with the generators that must come out at chance.

The main job (gmia.jobs.main_job) attacks its target generator and a control trained on other
people. This job adds, in its own workdir, the generators a calibration must be checked on:
  untrained    the target's generator trained for `untrained_steps` (noise: it saw no one);
  reference_b  the same generator trained on `reference_people` other people (drawn from the
               split's encoder identities, never a target), so that the control too can be
               reference-calibrated by a generator other than itself;
attacks both with the main job's attack settings and people, trains `shadows.num_shadows` shadow
generators (gmia.jobs.shadows: the target's recipe on people the attacker holds, half of them
seeing each tested person's reference photos) and attacks them the same way, then reports every
variant of gmia.attacks.calibration (AUC, bootstrap interval, TPR at low FPR) for the target, the
control, the untrained generator and reference_b; the likelihood-ratio variants judge every
generator's scores against the same shadows. Reference calibration uses the control for every
generator but the control itself, which uses reference_b. Writes calibration.json,
calibration.md and report.html; every training and attack is cached as a stage (gmia.jobs.stages).
"""

from __future__ import annotations

import copy
import os
import time

import ml_collections
import numpy as np

from gmia import files, fingerprint
from gmia.attacks import calibration
from gmia.jobs import membership, page_builders, page_parts, shadows as shadows_lib, stages
from gmia.data import run_data
from gmia.data.split import IdentitySplit, make_split
from gmia.gan import trainer as gan_trainer

REPORT_FILE = "calibration.json"
GENERATORS = ("target", "control", "untrained", "reference_b")


def reference_split(arrays, split: IdentitySplit, *, people: int, reference_photos: int,
                    seed: int) -> IdentitySplit:
  """A split whose members are `people` of `split`'s encoder identities (seeded choice)."""
  chosen = np.random.default_rng([seed, 2**22]).choice(split.identities("encoder"), people,
                                                       replace=False)
  subset = arrays.select(arrays.photo_id[np.isin(arrays.identity, chosen)])
  return make_split(subset, seed=seed, members=people, non_members=0,
                    reference_photos=reference_photos)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and attacks the untrained and reference_b generators (cached), then reports every
  variant for the four generators; returns the contents of calibration.json."""
  main = config.main_workdir
  split_path = os.path.join(main, run_data.SPLIT_FILE)
  for needed in ("attack", "attack_control", "face_encoder"):
    if not stages.is_done(os.path.join(main, needed)):
      raise ValueError(f"{main}/{needed} is not finished: run attack/main_job.py there first")
  os.makedirs(workdir, exist_ok=True)
  data = copy.deepcopy(config.main.data)
  data.split.path = split_path
  arrays, split = run_data.load_dataset(data), IdentitySplit.load(split_path)
  other = reference_split(arrays, split, people=config.reference_people,
                          reference_photos=data.split.reference_photos, seed=config.seed)
  other_data = copy.deepcopy(data)
  other_data.split.path = os.path.join(workdir, "reference_b_split.json")
  if not os.path.exists(other_data.split.path):
    other.save(other_data.split.path)

  def trained(name, sub_data, **fields):
    gan = copy.deepcopy(config.main.gan)
    gan.data = sub_data
    gan.update(train_group="members", **fields)
    directory = os.path.join(workdir, f"gan_{name}")
    return directory, stages.run_stage(directory, lambda: gan_trainer.train_and_evaluate(gan,
                                                                                    directory))

  seconds, attacks = {}, {"target": os.path.join(main, "attack"),
                          "control": os.path.join(main, "attack_control")}
  for name, sub_data, fields in (("untrained", data, {"num_steps": config.untrained_steps}),
                                 ("reference_b", other_data, {})):
    generator, seconds[f"gan_{name}"] = trained(name, sub_data, **fields)
    attack = copy.deepcopy(config.main.attack)
    attack.update(generator="gmia:" + generator, split_path=split_path,
                  title=f"{name} generator")
    attack.matcher.update(kind="gmia", path=os.path.join(main, "face_encoder"))
    attacks[name] = os.path.join(workdir, f"attack_{name}")
    seconds[f"attack_{name}"] = stages.run_stage(attacks[name],
                                            lambda: membership.run(attack, attacks[name]))
  for name in ("attack", "attack_control"):
    seconds[name] = files.read_json(os.path.join(main, name, membership.REPORT_FILE))[
        "seconds"]

  if config.shadows.num_shadows:
    shadow_attack = copy.deepcopy(config.main.attack)
    shadow_attack.matcher.update(kind="gmia", path=os.path.join(main, "face_encoder"))
    seconds.update(shadows_lib.train_and_attack(
        os.path.join(workdir, "shadows"), split=split, split_path=split_path, data=data,
        family="gan", generator=config.main.gan, attack=shadow_attack, shadows=config.shadows))

  started = time.perf_counter()
  scores = {g: calibration.read_scores(attacks[g]) for g in GENERATORS}
  scores = {g: s.aligned_to(scores["target"]) for g, s in scores.items()}
  population = calibration.Population(os.path.join(main, "face_encoder"), arrays)(
      split, scores["target"].identity)
  seconds["population"] = time.perf_counter() - started
  options = {"num_resamples": config.main.attack.bootstrap_resamples,
             "seed": config.main.attack.seed}
  reports = {}
  for generator in GENERATORS:
    reference = scores["reference_b" if generator == "control" else "control"]
    shadow_scores = (shadows_lib.read_shadows(os.path.join(workdir, "shadows"), scores[generator])
                     if config.shadows.num_shadows else None)
    variants = calibration.variant_scores(scores[generator], reference=reference,
                                          population=population, shadows=shadow_scores)
    reports[generator] = calibration.variant_reports(variants, scores[generator].is_member,
                                                     **options)
  summary = {"metrics": reports, "seconds": seconds, "config": config.to_dict(),
             "num_shadows": int(config.shadows.num_shadows)}
  summary.update(page_builders.calibration_extras(summary))
  summary["provenance"] = page_parts.provenance(workdir, config, sum(seconds.values()), {
      "split": fingerprint.tree_digest(split.to_json())})
  files.write_json(os.path.join(workdir, REPORT_FILE), summary)
  files.write_atomic(os.path.join(workdir, "calibration.md"), markdown_table(summary))
  page_parts.write_page(workdir, page_builders.calibration_page, summary,
                           config.main.attack.report_photos)
  return summary


def markdown_table(summary: dict) -> str:
  """Variants in rows, generators in columns: AUC [95% interval]."""
  reports = summary["metrics"]
  lines = ["| variant | " + " | ".join(GENERATORS) + " |", "|---|" + "---|" * len(GENERATORS)]
  for variant in reports["target"]:
    cells = [calibration.auc_text(reports[g][variant]).removeprefix("AUC ") for g in GENERATORS]
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  first = reports["target"]["best"]
  lines.append(f"\n{first['num_positives']} members vs {first['num_negatives']} non-members. "
               "-ref: minus the score against the control generator (for the control: against "
               "reference_b); -pop: standardised by the similarity to the other people's "
               "reference photos; -lira: the likelihood ratio of the score under the shadow "
               "generators that saw the person and those that did not; -lira_offline: against "
               f"the latter alone ({summary['num_shadows']} shadows).\n")
  return "\n".join(lines)
