r"""A 64 px DDPM for an accelerator: DDPM's layout (two resnet blocks per resolution, self-attention
at 16 px, dropout 0.1) over five resolutions with google/ddpm-celebahq-256's channel multipliers
(1, 1, 2, 2, 4 of 128): 71M parameters.

  python -m train.train_diffusion --config=train/configs/diffusion_64.py --workdir=... \
      --config.data.name=celeb_a --config.data.manual_dir=/data/celeba
"""

from gmia.diffusion import trainer


def get_config():
  config = trainer.default_config()
  config.data.resolution = 64
  config.batch_size = 64
  config.num_steps = 200_000
  config.model.update(
      block_out_channels=(128, 128, 256, 256, 512),
      down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                        "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
      layers_per_block=2, dropout=0.1)
  config.checkpoint_every = 5000
  return config
