"""Score variants on the main job (see gmia.jobs.calibration).

  python -m attack.calibration --workdir=runs/demo/calibration --config.main_workdir=runs/demo
"""

import ml_collections

from attack.configs import main_job
from gmia.jobs import shadows


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.main_workdir = "runs/demo"  # A finished attack/main_job.py workdir.
  config.main = main_job.get_config()  # Its config: data, generator and attack settings.
  config.untrained_steps = 1
  config.reference_people = 25  # reference_b: encoder identities, as many as the control has.
  config.seed = 1
  config.shadows = shadows.default_config()  # 4 shadows; num_shadows 0: no likelihood ratios.
  return config
