"""Every score variant on the main job: target, control, an untrained and a second reference
generator, each variant's AUC with its bootstrap interval.

  python -m attack.calibration --workdir=runs/demo/calibration --config.main_workdir=runs/demo

Needs a finished main job (attack/main_job.py) in main_workdir; trains and attacks the untrained
and reference_b generators in --workdir (cached), then writes calibration.json and calibration.md.
"""

import os

from gmia import cli
from gmia.jobs import calibration as calibration_job


def _show(summary, workdir):
  print(calibration_job.markdown_table(summary))
  print(f"report: {os.path.join(workdir, calibration_job.REPORT_FILE)}")


if __name__ == "__main__":
  cli.launch(calibration_job.run, show=_show, default_config=os.path.join(
      os.path.dirname(__file__), "configs", "calibration.py"))
