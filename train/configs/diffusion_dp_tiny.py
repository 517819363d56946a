r"""The tiny DDPM (diffusion_tiny) trained with person-level DP-SGD, for the tests: seconds on CPU.

  python -m train.train_diffusion --config=train/configs/diffusion_dp_tiny.py \
      --workdir=/tmp/diffusion_dp_tiny

Half of the 6 members expected per step, 2 photos each; the RDP accountant (the fastest to
calibrate) at a loose target, since 6 people allow no meaningful one.
"""

from train.configs import diffusion_tiny


def get_config():
  config = diffusion_tiny.get_config()
  config.privacy.update(enabled=True, target_epsilon=50.0, delta=1e-3, clip_norm=1.0,
                        people_per_step=3.0, max_photos_per_person=2, accountant="rdp")
  return config
