"""Identity membership attack: was this person in the generator's training set?

  python -m attack.membership --workdir=runs/attack \
      --config.generator=gmia:runs/demo/gan --config.matcher.path=runs/demo/face_encoder

Writes report.json, scores.csv, samples.csv, roc.png and matches.png; a killed run resumes from
its last finished chunk of samples, and a larger num_samples extends a finished run.
"""

import os

from gmia import cli
from gmia.jobs import membership


def _show(summary, workdir):
  print("\n".join(membership.summary_lines(summary)))
  print(f"report: {os.path.join(workdir, membership.REPORT_FILE)}")


if __name__ == "__main__":
  cli.launch(membership.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "membership.py"))
