"""The main job: every stage on the embedded default data, each cached in the workdir.

  python -m attack.run_all --workdir=runs/demo

Stages (a second run reuses every finished stage; a killed run resumes the one it was in):
  data      render the synthetic faces, split identities, save split.json and data_overview.png;
  face_encoder  train the face encoder on the encoder identities only (workdir/face_encoder);
  gan       train the target generator on the members' training photos (workdir/gan);
  control   train the same generator on the shadow identities instead (workdir/gan_control);
  attack    the identity membership attack on both generators (workdir/attack,
            workdir/attack_control). Against the control, which never saw any member, the attack
            must come out near chance.
"""

from __future__ import annotations

import copy
import os

import ml_collections
import numpy as np

from gmia import cli, files, viz
from gmia.attacks import membership_job
from gmia.data import run_data
from gmia.face_encoder import trainer as encoder_trainer
from gmia.gan import trainer as gan_trainer

DONE = "DONE"


def data_overview(arrays, split, identities: int, path: str) -> None:
  """Saves a grid: member identities in rows, their training then reference photos in columns."""
  rows, labels = [], []
  for identity in split.identities("members")[:identities].tolist():
    train, reference = split.train[identity][:4], split.reference[identity][:2]
    rows.append(arrays.select(np.concatenate([train, reference])).images)
    labels += [f"id {identity}"] + [""] * (len(train) - 1) + ["ref"] * len(reference)
  upscale = max(1, 96 // arrays.resolution)
  viz.save_grid(path, np.concatenate(rows), ncols=len(rows[0]), labels=labels, upscale=upscale)


def stage(workdir: str, name: str, run) -> None:
  """Runs `run()` unless the stage's DONE marker exists; writes the marker when it finishes."""
  marker = os.path.join(workdir, name, DONE)
  if os.path.exists(marker):
    print(f"[{name}] cached in {os.path.dirname(marker)}")
    return
  print(f"[{name}] running ...", flush=True)
  run()
  files.write_atomic(marker, "")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Every stage in `workdir`; returns {attack name: its report's metrics}."""
  os.makedirs(workdir, exist_ok=True)

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

  stage(workdir, "face_encoder", lambda: encoder_trainer.train_and_evaluate(
      trained(config.face_encoder), os.path.join(workdir, "face_encoder")))
  stage(workdir, "gan", lambda: gan_trainer.train_and_evaluate(
      trained(config.gan, train_group="members"), os.path.join(workdir, "gan")))
  stage(workdir, "gan_control", lambda: gan_trainer.train_and_evaluate(
      trained(config.gan, train_group="shadow"), os.path.join(workdir, "gan_control")))

  summaries = {}
  for name, generator in (("attack", "gan"), ("attack_control", "gan_control")):
    attack = copy.deepcopy(config.attack)
    attack.generator = "gmia:" + os.path.join(workdir, generator)
    attack.encoder_workdir = os.path.join(workdir, "face_encoder")
    attack.title = ("target generator (trained on the members)" if name == "attack" else
                    "control generator (trained on other people)")
    stage(workdir, name, lambda: membership_job.run(attack, os.path.join(workdir, name)))
    summaries[name] = files.read_json(os.path.join(workdir, name, membership_job.REPORT_FILE))

  for name, summary in summaries.items():
    print(f"\n{summary['config']['title']}:")
    print("\n".join(membership_job.summary_lines(summary)))
  metrics = {name: s["metrics"] for name, s in summaries.items()}
  files.write_json(os.path.join(workdir, "summary.json"), metrics)
  print(f"\nreports: {workdir}/attack/ and {workdir}/attack_control/ "
        "(report.json, roc.png, matches.png, scores.csv)")
  return metrics


if __name__ == "__main__":
  cli.launch(run, workdir_default="runs/demo", workdir_help="Where every stage keeps its results.",
             default_config=os.path.join(os.path.dirname(__file__), "configs", "main_job.py"))
