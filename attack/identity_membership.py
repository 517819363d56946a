"""Identity membership attack: was this person in the generator's training set?

  python -m attack.identity_membership --workdir=runs/attack \
      --config.generator_workdir=runs/demo/gan --config.encoder_workdir=runs/demo/encoder

Writes report.json, scores.csv, samples.csv, roc.png and matches.png; a killed run resumes from
its last finished chunk of samples.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from gmia import parallel, progress
from gmia.attacks import membership_job

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "identity_membership.py"),
    "Attack config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the report and the resumable state go.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed()
  progress.quiet_library_logs()
  summary = membership_job.run(_CONFIG.value, _WORKDIR.value)
  print("\n".join(membership_job.summary_lines(summary)))
  print(f"report: {os.path.join(_WORKDIR.value, membership_job.REPORT_FILE)}")


if __name__ == "__main__":
  app.run(main)
