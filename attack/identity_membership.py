"""Identity membership attack: was this person in the generator's training set?

  python -m attack.identity_membership --workdir=runs/attack \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/encoder

Writes report.json, scores.csv, samples.csv, roc.png and matches.png; a killed run resumes from
its last finished chunk of samples, and a larger num_samples extends a finished run.
"""

import os

from attack import cli
from gmia.attacks import membership_job
from gmia.cli import run


def _show(summary, workdir):
  print("\n".join(membership_job.summary_lines(summary)))
  print(f"report: {os.path.join(workdir, membership_job.REPORT_FILE)}")


main = cli.entry_point("identity_membership.py", membership_job.run, _show)

if __name__ == "__main__":
  run(main)
