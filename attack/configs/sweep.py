"""Identity leakage against members and training photos per member, on the synthetic faces.

  python -m attack.sweep --workdir=runs/sweep
  # reusing the encoder and control of the over-representation sweep (their people include all
  # of this sweep's, so neither ever saw a target here):
  python -m attack.sweep --workdir=runs/sweep \
      --config.face_encoder_workdir=runs/sweep_over/face_encoder \
      --config.control_workdir=runs/sweep_over/gan_control

Grid: 10 and 100 members x 5 and 35 training photos per member, each generator the main
job's (gan_cpu_demo, 2,000 steps), attacked with 5,000 samples against the same 100 non-members'
and the members' 5 reference photos. Wall time on 2 CPU cores: 43 min (encoder 3 min,
control 8 min, points 5-10 min each, shared with other work); AUC 0.86 and 0.83 at 10 members,
0.56 and 0.56 at 100 (README).
"""

import ml_collections

from attack.configs import main_job
from gmia.jobs import shadows
from train.configs import diffusion_cpu_demo


def get_config() -> ml_collections.ConfigDict:
  main = main_job.get_config()
  config = ml_collections.ConfigDict()
  config.data = main.data          # 1,000 identities x 40 photos; 100 non-members, 25 shadow.
  config.face_encoder = main.face_encoder
  config.gan = main.gan
  config.diffusion = diffusion_cpu_demo.get_config()  # The DDPM of the grid's "diffusion" family.
  config.attack = main.attack
  config.face_encoder_workdir = ""  # A trained encoder to reuse (it must never have seen a target).
  config.control_workdir = ""      # A trained control generator to reuse (the same).
  config.grid = ml_collections.ConfigDict({
      "families": ("gan",),        # Target generator families: "gan", "diffusion".
      "members": (10, 100),
      "photos": (5, 35),           # data.split.max_train_photos of each point.
      "steps": (),                 # (): each family's num_steps.
      "overrepresented": 0,        # Members of every point trained on more photos ...
      "overrepresented_photos": -1,  # ... up to this many (-1: all but the reference photos).
  })
  # Tables and figures: the paper's score, then population- and reference-calibrated (see
  # gmia.attacks.calibration); the first also ranks the people in each point's exposure.csv.
  config.variants = ("best", "best-pop", "best-ref")
  # Shadow generators per point (gmia.jobs.shadows) for the likelihood-ratio variants (-lira).
  config.shadows = shadows.default_config()
  config.shadows.num_shadows = 0
  return config
