r"""The CPU diffusion target (diffusion_cpu_demo) trained with person-level DP-SGD at epsilon 10.

  python -m train.train_diffusion --config=train/configs/diffusion_dp_cpu_demo.py \
      --workdir=/tmp/diffusion_dp_demo

The main job's people (25 members with 35 training photos each, 1,000 identities x 40 photos at
32 px, no mirroring) and diffusion_cpu_demo's U-Net, schedule and 2,000 steps; a step samples 8
of the 25 members in expectation and keeps at most 16 of them, 4 photos each, as
gan_dp_cpu_demo does, under the PLD accountant. The clip norm, 1, is about half the median
per-person gradient norm at initialisation (2.06; 10% / 90%: 1.83 / 3.05, measured on 32 people
of 4 photos) and the ordinary recipe's clip of the batch gradient.
"""

from train.configs import diffusion_cpu_demo


def get_config():
  config = diffusion_cpu_demo.get_config()
  config.data.update(identities=1000, photos=40)
  config.data.split.update(members=25, non_members=100, shadow=25, reference_photos=5)
  config.mirror = False
  config.privacy.update(enabled=True, target_epsilon=10.0, delta=1e-5, clip_norm=1.0,
                        people_per_step=8.0, max_people_per_step=16, max_photos_per_person=4,
                        accountant="pld")
  return config
