"""Defences measured: generators trained with person-level DP, leakage and quality against epsilon,
an empirical epsilon from identity canaries, and the release filter's curve.

  python -m attack.privacy --workdir=runs/privacy \
      --config.face_encoder_workdir=runs/demo/face_encoder

Writes privacy.json, privacy.md (the table), privacy.png, privacy_samples.png and filter.png; see
gmia.jobs.privacy. A killed run resumes at the stage it was in.
"""

import os

from gmia import cli
from gmia.jobs import privacy


def _show(summary, workdir):
  print(privacy.markdown_table(summary))
  print(f"report: {os.path.join(workdir, privacy.REPORT_FILE)}, privacy.md, privacy.png")


if __name__ == "__main__":
  cli.launch(privacy.run, show=_show, workdir_default="runs/privacy",
             workdir_help="Where every point keeps its generator and attack.",
             default_config=os.path.join(os.path.dirname(__file__), "configs", "privacy.py"))
