r"""NVIDIA's `auto` StyleGAN2 hyperparameters (stylegan2-ada-pytorch train.py) for 32 to 256 px.

  python -m train.train_gan --config=train/configs/gan_auto.py:64 --workdir=/tmp/gan_auto64
  python -m train.train_gan --config=train/configs/gan_auto.py:256,8 --workdir=... \
      --config.data.name=celeb_a --config.data.manual_dir=/data/celeba

The argument is `resolution[,devices]` (devices: NVIDIA's GPU count, default 1), giving
  batch = max(min(devices * min(4096 // res, 32), 64), devices), minibatch-std group
  min(batch // devices, 4), fmaps 0.5 below 512 px (channel_base 16384), lr 0.0025,
  R1 gamma = 0.0002 * res^2 / batch, EMA batch * 10 / 32 kimg with ramp-up 0.05, 2 mapping layers,
with NVIDIA's defaults otherwise (path length 2, style mixing 0.9, residual discriminator).
The embedded synthetic faces exist at 32, 64 and 128 px; 256 px needs a photo collection.
"""

from gmia.gan import trainer


def get_config(arg: str = "64"):
  fields = [int(v) for v in arg.split(",")]
  resolution, devices = fields[0], (fields[1] if len(fields) > 1 else 1)
  batch = max(min(devices * min(4096 // resolution, 32), 64), devices)
  config = trainer.default_config()
  config.data.resolution = resolution
  config.batch_size = batch
  config.num_steps = 25_000_000 // batch  # NVIDIA's default length: 25,000 kimg.
  config.model.update(mapping_layers=2, channel_base=16384, channel_max=512,
                      mbstd_group_size=min(batch // devices, 4))
  config.optimizer.update(g_lr=0.0025, d_lr=0.0025)
  config.loss.update(r1_gamma=0.0002 * resolution ** 2 / batch)
  config.ema_kimg, config.ema_rampup = batch * 10 / 32, 0.05
  config.log_every = 100
  config.checkpoint_every = 5000
  return config
