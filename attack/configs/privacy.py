r"""Leakage against epsilon: the main job's generator recipe trained with person-level DP.

  python -m attack.privacy --workdir=runs/privacy \
      --config.face_encoder_workdir=runs/demo/face_encoder

The main job's people (25 members, 100 non-members) and its 25 shadow identities as canaries,
each included with probability 1/2; gan_dp_cpu_demo's recipe (the main generator with D's
minibatch-std layer off, a step sampling 8 people in expectation, 4 photos each) at epsilon
inf (no DP), 50, 10, 3 and 1, delta 1e-5; the release filter on the non-private generator at four
thresholds. The diffusion half (diffusion_dp_cpu_demo's DDPM, sampled with 50 DDIM steps):

  python -m attack.privacy --workdir=runs/privacy_ddpm --config.family=diffusion \
      --config.face_encoder_workdir=runs/demo/face_encoder
"""

import ml_collections

from attack.configs import main_job
from train.configs import diffusion_dp_cpu_demo, gan_dp_cpu_demo


def get_config() -> ml_collections.ConfigDict:
  main = main_job.get_config()
  config = ml_collections.ConfigDict()
  config.data = main.data
  config.face_encoder_workdir = ""     # A face encoder that never saw a target or a canary.
  config.family = "gan"                # The recipe every point trains: "gan" or "diffusion".
  config.gan = gan_dp_cpu_demo.get_config()
  config.diffusion = diffusion_dp_cpu_demo.get_config()
  config.attack = main.attack
  config.epsilons = (0.0, 50.0, 10.0, 3.0, 1.0)  # 0: no privacy (the same recipe, DP off).
  config.canary_group = "shadow"       # Canaries: people no target or encoder ever includes.
  config.num_canaries = -1             # -1: the whole group.
  config.filter_thresholds = (0.8, 0.7, 0.6, 0.5)  # Release filter on the non-private point.
  config.variants = ("best", "topk_mean", "count", "density")  # The first: the canary audit's.
  config.seed = 0
  return config
