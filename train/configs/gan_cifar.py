r"""NVIDIA's `cifar` StyleGAN2 hyperparameters (stylegan2-ada-pytorch train.py) on 32 px faces.

  python -m train.train_gan --config=train/configs/gan_cifar.py --workdir=/tmp/gan_cifar

Reference table row: 2 GPUs, batch 64, minibatch-std group 32, fmaps 1 (512 feature maps at every
resolution up to 32 px), lr 0.0025, R1 gamma 0.01, EMA 500 kimg with ramp-up 0.05, 2 mapping
layers; no path-length regulariser, no style mixing, discriminator `orig` (no residual skips).
Meant for an accelerator; the data set defaults to the embedded synthetic faces at 32 px.
"""

from gmia.gan import trainer


def get_config():
  config = trainer.default_config()
  config.data.resolution = 32
  config.batch_size = 64
  config.num_steps = 100_000_000 // 64  # NVIDIA trains cifar for 100,000 kimg.
  config.model.update(mapping_layers=2, channel_base=32768, channel_max=512,
                      d_architecture="orig", mbstd_group_size=32)
  config.optimizer.update(g_lr=0.0025, d_lr=0.0025)
  config.loss.update(r1_gamma=0.01, pl_weight=0.0, style_mixing_prob=0.0)
  config.ema_kimg, config.ema_rampup = 500.0, 0.05
  config.log_every = 100
  config.checkpoint_every = 5000
  return config
