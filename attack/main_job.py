"""The main job on the embedded default data: encoder, target and control generators, attacks.

  python -m attack.main_job --workdir=runs/demo
  python -m attack.main_job --workdir=runs/demo --config.gan.num_steps=4000

See gmia.jobs.main_job for its stages and attack/configs/main_job.py for the settings.
"""

import os

from gmia import cli
from gmia.jobs import main_job

if __name__ == "__main__":
  cli.launch(main_job.run, workdir_default="runs/demo",
             workdir_help="Where every stage keeps its results.",
             default_config=os.path.join(os.path.dirname(__file__), "configs", "main_job.py"))
