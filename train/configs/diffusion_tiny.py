r"""A DDPM small enough for CPU tests: 32 px, a U-Net of 4-8 channels, a few steps.

  python -m train.train_diffusion --config=train/configs/diffusion_tiny.py \
      --workdir=/tmp/diffusion_tiny
"""

from gmia.diffusion import trainer


def get_config():
  config = trainer.default_config()
  data = config.data
  data.resolution = 32
  data.identities, data.photos = 16, 6
  data.split.update(members=6, non_members=4, shadow=0, reference_photos=2)
  config.batch_size = 16
  config.num_steps = 24
  config.model.update(block_out_channels=(4, 8), down_block_types=("DownBlock2D",
                                                                   "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                      norm_num_groups=2, attention_head_dim=4)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=2)
  config.ema_decay = 0.9
  config.log_every = 4
  config.checkpoint_every = 12
  config.grid_size = 8
  config.grid_steps = 4
  return config
