"""Score variants on the main job (see gmia.attacks.calibration_job).

  python -m attack.calibrate --workdir=runs/demo/calibration --config.main_workdir=runs/demo
"""

import ml_collections

from attack.configs import main_job


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.main_workdir = "runs/demo"  # A finished attack/run_all.py workdir.
  config.main = main_job.get_config()  # Its config: data, generator and attack settings.
  config.untrained_steps = 1
  config.reference_people = 25  # reference_b: encoder identities, as many as the control has.
  config.seed = 1
  return config
