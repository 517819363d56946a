"""The main job on the embedded synthetic faces: encoder, target and control generators, attacks.

  python -m attack.main_job --workdir=runs/demo
  python -m attack.main_job --workdir=runs/demo --config.gan.num_steps=4000

Data: 1,000 identities x 40 photos at 32 px; 25 members, 100 non-members and 25 shadow
identities, each with 35 training and 5 reference photos; the encoder trains on the other 850.
Few members with many photos each: every member is a large mode of the training set, which is
what makes a 2,000-step CPU generator reproduce who they are (with 15 training photos each the
same run gave AUC 0.75 [0.64, 0.85]; 100 members, 0.59 with an older generator setting).

Measured on 2 CPU cores (18 min in all): encoder held-out 1-NN identification 99.7% (pixels:
13.6%); attack on the target generator AUC 0.810 [0.713, 0.902], TPR 0.20 @ FPR 1%; on the
control generator (trained on the shadow identities) AUC 0.580 [0.470, 0.685] (best-match score,
5,000 samples).
"""

import ml_collections

from gmia.jobs import membership
from gmia.data import run_data
from train.configs import face_encoder_cpu_demo, gan_cpu_demo


def get_config() -> ml_collections.ConfigDict:
  data = run_data.default_config()
  data.update(resolution=32, identities=1000, photos=40)
  data.split.update(members=25, non_members=100, shadow=25, reference_photos=5)
  config = ml_collections.ConfigDict()
  config.data = data
  config.face_encoder = face_encoder_cpu_demo.get_config()
  config.face_encoder.eval_every = 0  # Evaluate once, at the end.
  config.gan = gan_cpu_demo.get_config()
  config.gan.mirror = False  # Mirroring would move moles and partings: identity cues here.
  config.attack = membership.default_config()
  config.attack.num_samples = 5_000
  config.overview_identities = 8  # Rows of the data overview figure.
  return config
