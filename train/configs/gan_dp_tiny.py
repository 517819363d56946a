r"""The tiny StyleGAN2 (gan_tiny) trained with person-level DP-SGD, for the tests: seconds on CPU.

  python -m train.train_gan --config=train/configs/gan_dp_tiny.py --workdir=/tmp/gan_dp_tiny

Half of the 6 members expected per step, 2 photos each; the RDP accountant (the fastest to
calibrate) at a loose target, since 6 people allow no meaningful one.
"""

from train.configs import gan_tiny


def get_config():
  config = gan_tiny.get_config()
  config.model.mbstd_num_channels = 0  # DP training compares no photos across a batch.
  config.privacy.update(enabled=True, target_epsilon=50.0, delta=1e-3, clip_norm=0.5,
                        r1_clip_norm=0.01, people_per_step=3.0, max_photos_per_person=2,
                        accountant="rdp")
  return config
