"""The main job: every stage on the embedded default data, each cached in the workdir.

  python -m attack.main_job --workdir=runs/demo

Stages (gmia.jobs.stages: a second run reuses every finished stage; a killed run resumes the one
it was in):
  data          render the synthetic faces, split identities, save split.json and
                data_overview.png;
  face_encoder  train the face encoder on the encoder identities only (workdir/face_encoder);
  gan           train the target generator on the members' training photos (workdir/gan);
  gan_control   train the same generator on the shadow identities instead (workdir/gan_control);
  attack        the identity membership attack on both generators (workdir/attack,
                workdir/attack_control). Against the control, which never saw any member, the
                attack must come out near chance.
Then report.json and report.html: both attacks' headline numbers, linking their pages.
"""

from __future__ import annotations

import copy
import os

import ml_collections
import numpy as np

from gmia import files, fingerprint, viz
from gmia.data import run_data
from gmia.face_encoder import trainer as encoder_trainer
from gmia.gan import trainer as gan_trainer
from gmia.jobs import membership, page_builders, page_parts
from gmia.jobs.stages import run_stage


def data_overview(arrays, split, identities: int, path: str) -> None:
  """Saves a grid: member identities in rows, their training then reference photos in columns."""
  rows, labels = [], []
  for identity in split.identities("members")[:identities].tolist():
    train, reference = split.train[identity][:4], split.reference[identity][:2]
    rows.append(arrays.select(np.concatenate([train, reference])).images)
    labels += [f"id {identity}"] + [""] * (len(train) - 1) + ["ref"] * len(reference)
  upscale = max(1, 96 // arrays.resolution)
  viz.save_grid(path, np.concatenate(rows), ncols=len(rows[0]), labels=labels, upscale=upscale)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Every stage in `workdir`; returns {attack name: its report's metrics}."""
  os.makedirs(workdir, exist_ok=True)
  seconds = 0.0  # Of every stage, as it ran (or was recorded when cached).

  arrays, split = run_data.load_for_run(config.data, workdir)
  data_overview(arrays, split, config.overview_identities,
                os.path.join(workdir, "data_overview.png"))
  print(f"[data] {len(arrays)} photos of {arrays.num_identities} identities at "
        f"{arrays.resolution} px; " + ", ".join(
            f"{g} {len(split.identities(g))}" for g in ("members", "non_members", "shadow",
                                                         "encoder")))
  shared = copy.deepcopy(config.data)
  shared.split.path = os.path.join(workdir, run_data.SPLIT_FILE)

  def trained(sub_config, **fields):
    sub_config = copy.deepcopy(sub_config)
    sub_config.data = shared
    sub_config.update(fields)
    return sub_config

  for name, sub_config, trainer in (
      ("face_encoder", trained(config.face_encoder), encoder_trainer),
      ("gan", trained(config.gan, train_group="members"), gan_trainer),
      ("gan_control", trained(config.gan, train_group="shadow"), gan_trainer)):
    directory = os.path.join(workdir, name)
    seconds += run_stage(directory, lambda: trainer.train_and_evaluate(sub_config, directory),
                         name)

  summaries = {}
  for name, generator in (("attack", "gan"), ("attack_control", "gan_control")):
    attack = copy.deepcopy(config.attack)
    attack.generator = "gmia:" + os.path.join(workdir, generator)
    attack.matcher.update(kind="gmia", path=os.path.join(workdir, "face_encoder"))
    attack.title = ("target generator (trained on the members)" if name == "attack" else
                    "control generator (trained on other people)")
    directory = os.path.join(workdir, name)
    seconds += run_stage(directory, lambda: membership.run(attack, directory), name)
    summaries[name] = files.read_json(os.path.join(workdir, name, membership.REPORT_FILE))
    # Drawn again, so that report_photos holds for the pages of cached attacks too.
    page_parts.write_page(directory, page_builders.membership_page, summaries[name],
                             config.attack.report_photos)

  for name, summary in summaries.items():
    print(f"\n{summary['config']['title']}:")
    print("\n".join(membership.summary_lines(summary)))
  metrics = {name: s["metrics"] for name, s in summaries.items()}
  files.write_json(os.path.join(workdir, "summary.json"), metrics)
  report = page_builders.main_job_report(workdir, config, summaries, seconds,
                                         {"split": fingerprint.tree_digest(split.to_json())})
  files.write_json(os.path.join(workdir, membership.REPORT_FILE), report)
  page_parts.write_page(workdir, page_builders.main_job_page, report,
                           config.attack.report_photos)
  print(f"\nreports: {workdir}/{page_parts.PAGE_FILE} (open it in a browser), linking "
        f"{workdir}/attack/ and {workdir}/attack_control/ (report.html, report.json, roc.png, "
        "matches.png, scores.csv)")
  return metrics
