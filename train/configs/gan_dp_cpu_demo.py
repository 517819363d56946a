r"""The main CPU generator (gan_cpu_demo) trained with person-level DP-SGD at epsilon 10.

  python -m train.train_gan --config=train/configs/gan_dp_cpu_demo.py --workdir=/tmp/gan_dp_demo
  python -m train.train_gan --config=train/configs/gan_dp_cpu_demo.py --workdir=/tmp/gan_dp_eps1 \
      --config.privacy.target_epsilon=1

The main job's people (25 members with 35 training photos each, 1,000 identities x 40 photos at
32 px, no mirroring) and gan_cpu_demo's model and schedule, D's minibatch-std layer off. A step
samples 8 of the 25 members in expectation (rate 0.32) and keeps at most 16 of them, 4 photos
each, so its real batch is 32 photos on average as gan_cpu_demo's; the PLD accountant composes
the truncated steps. At delta 1e-5 over the 2,000 steps (and 125 R1 updates) the calibrated
noise multiplier is 7.45 for epsilon 10, 20.6 for epsilon 3 and 55.2 for epsilon 1 (Poisson
sampling without the limit of 16: 7.42, 20.6, 55.1); calibrating the truncated steps takes 1-2
minutes when the run starts. The clip norms are about the median per-person gradient norms at
initialisation (real term 0.75-0.87, R1 4e-5 to 9e-5, measured on 32 members).
"""

from train.configs import gan_cpu_demo


def get_config():
  config = gan_cpu_demo.get_config()
  config.data.update(identities=1000, photos=40)
  config.data.split.update(members=25, non_members=100, shadow=25, reference_photos=5)
  config.mirror = False
  config.model.mbstd_num_channels = 0  # DP training compares no photos across a batch.
  config.privacy.update(enabled=True, target_epsilon=10.0, delta=1e-5, clip_norm=0.8,
                        r1_clip_norm=6e-5, people_per_step=8.0, max_people_per_step=16,
                        max_photos_per_person=4, accountant="pld")
  return config
