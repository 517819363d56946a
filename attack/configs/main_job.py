"""The main job on the embedded synthetic faces: encoder, target and control generators, attacks.

  python -m attack.run_all --workdir=runs/demo
  python -m attack.run_all --workdir=runs/demo --config.gan.total_steps=4000

Data: 1,000 identities x 20 photos at 32 px; 100 members, 100 non-members and 100 shadow
identities, each with 15 training and 5 reference photos; the encoder trains on the other 700.
Measured on 2 shared CPU cores: the encoder reaches 99.2% held-out 1-NN identification (pixels:
11.4%); an earlier 6,000-step generator setting gave AUC 0.59 [0.51, 0.67] at step 5,000
(best-match score, 5,000 samples). Training two generators is most of the time; see README.md.
"""

import ml_collections

from gmia.attacks import membership_job
from gmia.data import run_data
from train.configs import arcface_cpu_demo, gan_cpu_demo


def get_config() -> ml_collections.ConfigDict:
  data = run_data.default_config()
  data.update(resolution=32, identities=1000, photos=20)
  data.split.update(members=100, non_members=100, shadow=100, reference_photos=5)
  config = ml_collections.ConfigDict()
  config.data = data
  config.encoder = arcface_cpu_demo.get_config()
  config.encoder.eval_every = config.encoder.num_steps  # Evaluate once, at the end.
  config.gan = gan_cpu_demo.get_config()
  config.gan.mirror = False  # Mirroring would move moles and partings: identity cues here.
  config.attack = membership_job.default_config()
  config.attack.num_samples = 5_000
  config.overview_identities = 8  # Rows of the data overview figure.
  return config
