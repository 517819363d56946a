"""The privacy job at toy size (its end-to-end test): two points of a few DP steps each.

  python -m attack.privacy --workdir=/tmp/privacy_tiny --config=attack/configs/privacy_tiny.py \
      --config.face_encoder_workdir=/tmp/demo_tiny/face_encoder

The models train for a few steps only, so the numbers mean nothing here.
"""

import ml_collections

from attack.configs import main_job_tiny, privacy
from train.configs import diffusion_dp_tiny, gan_dp_tiny


def get_config() -> ml_collections.ConfigDict:
  tiny = main_job_tiny.get_config()
  config = privacy.get_config()
  config.data, config.attack = tiny.data, tiny.attack
  config.gan = gan_dp_tiny.get_config()
  config.gan.update(num_steps=2, checkpoint_every=2, log_every=1)
  config.diffusion = diffusion_dp_tiny.get_config()
  config.diffusion.update(num_steps=2, checkpoint_every=2, log_every=1, grid_size=2)
  config.attack.diffusion_steps = 2
  config.epsilons = (0.0, 50.0)
  config.filter_thresholds = (1.0, 0.9)  # Keeps every sample; keeps too few to attack.
  return config
