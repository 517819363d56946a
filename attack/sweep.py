"""Leakage against the training set's size: target generators over a grid, one attack for all.

  python -m attack.sweep --workdir=runs/sweep
  python -m attack.sweep --workdir=runs/sweep_over --config=attack/configs/sweep_overrepresented.py

Writes sweep.json, sweep.md (the table) and sweep.png (AUC against photos per member, one line
per member count, the control generator's interval as a band) in the workdir; each point keeps
its generator, attack, exposure.csv and exposure.png under points/. A killed sweep resumes at
the stage it was in.
"""

import os

from gmia import cli
from gmia.jobs import sweep


def _show(summary, workdir):
  print(sweep.markdown_table(summary))
  print(f"sweep: {os.path.join(workdir, sweep.SWEEP_FILE)}, sweep.md, sweep.png")


if __name__ == "__main__":
  cli.launch(sweep.run, show=_show, workdir_default="runs/sweep",
             workdir_help="Where every point of the sweep keeps its results.",
             default_config=os.path.join(os.path.dirname(__file__), "configs", "sweep.py"))
