"""The sweep at toy size (the end-to-end test): two points of a few training steps each.

  python -m attack.sweep --workdir=/tmp/sweep_tiny --config=attack/configs/sweep_tiny.py

The models train for a few steps only, so the AUCs mean nothing here.
"""

import ml_collections

from attack.configs import main_job_tiny, sweep
from train.configs import diffusion_tiny


def get_config() -> ml_collections.ConfigDict:
  tiny = main_job_tiny.get_config()
  config = sweep.get_config()
  for name in ("data", "face_encoder", "gan", "attack"):
    config[name] = tiny[name]
  config.grid.update(members=(3,), photos=(1, 3), overrepresented=1, overrepresented_photos=-1)
  config.diffusion = diffusion_tiny.get_config()  # For --config.grid.families with "diffusion".
  config.diffusion.update(num_steps=2, checkpoint_every=2, log_every=1, grid_size=2)
  config.attack.diffusion_steps = 2
  return config
