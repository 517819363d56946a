r"""A StyleGAN2 small enough for CPU tests: 32 px, 8-16 feature maps, a few dozen steps.

  python -m train.train_gan --config=train/configs/gan_tiny.py --workdir=/tmp/gan_tiny
"""

from gmia.gan import trainer


def get_config():
  config = trainer.default_config()
  data = config.data
  data.resolution = 32
  data.identities, data.photos = 16, 6
  data.split.update(members=6, non_members=4, shadow=0, reference_photos=2)
  config.batch_size = 16
  config.num_steps = 24
  config.model.update(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16)
  config.optimizer.update(g_lr=0.0025, d_lr=0.0025)
  # Intervals that put both regularisers, and the steps between them, in a short run.
  config.loss.update(r1_gamma=1.0, d_reg_interval=4, g_reg_interval=4)
  config.ema_kimg, config.ema_rampup = 0.1, 0.05
  config.log_every = 4
  config.checkpoint_every = 12
  config.grid_size = 8
  return config
