"""Identity membership attack: was this person in the generator's training set?

  python -m attack.identity_membership --workdir=runs/attack \
      --config.generator=gmia:runs/demo/gan --config.encoder_workdir=runs/demo/face_encoder

Writes report.json, scores.csv, samples.csv, roc.png and matches.png; a killed run resumes from
its last finished chunk of samples, and a larger num_samples extends a finished run.
"""

import os

from gmia import cli
from gmia.attacks import membership_job


def _show(summary, workdir):
  print("\n".join(membership_job.summary_lines(summary)))
  print(f"report: {os.path.join(workdir, membership_job.REPORT_FILE)}")


if __name__ == "__main__":
  cli.launch(membership_job.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "identity_membership.py"))
