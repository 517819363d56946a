"""The main job at toy size: every stage in about a minute, for a smoke test of an install.

  python -m attack.main_job --workdir=/tmp/demo_tiny --config=attack/configs/main_job_tiny.py

The models train for a few steps only, so the attack numbers mean nothing here.
"""

import ml_collections

from attack.configs import main_job
from train.configs import face_encoder_tiny, gan_tiny


def get_config() -> ml_collections.ConfigDict:
  config = main_job.get_config()
  config.data = gan_tiny.get_config().data
  config.data.identities = 20
  config.data.split.update(members=4, non_members=4, shadow=4, reference_photos=2)
  config.face_encoder = face_encoder_tiny.get_config()
  config.face_encoder.eval_identities = 2
  config.gan = gan_tiny.get_config()
  config.gan.update(num_steps=2, checkpoint_every=2, log_every=1)
  config.attack.update(num_samples=48, chunk_size=16, topk=3, bootstrap_resamples=50)
  config.overview_identities = 2
  return config
