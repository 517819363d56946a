r"""The main CPU job: a 32 px StyleGAN2 that draws recognisable synthetic faces in ~10 minutes
on 2 CPU cores, trained on the member identities of the embedded synthetic_faces data set.

  python -m train.train_gan --config=train/configs/gan_cpu_demo.py --workdir=/tmp/gan_demo

Follows NVIDIA's `cifar`/`auto` rules for small images (2-layer mapping, R1 gamma from
0.0002 * res^2 / batch, EMA ramp-up, no path-length regulariser, no style mixing), with narrow
layers (64 feature maps at 4-8 px, 32 at 16 px, 16 at 32 px) so that a step takes a few hundred
milliseconds on CPU, and twice NVIDIA's learning rate: in a 2,000-step budget it gave clearer
faces than 0.0025 with mixing (heads, eyes and mouths by step 1,000 instead of 2,000+).
"""

from gmia.gan import trainer


def get_config():
  config = trainer.default_config()
  config.data.resolution = 32
  config.batch_size = 32
  config.num_steps = 2000
  config.mirror = True
  config.model.update(z_dim=64, w_dim=64, mapping_layers=2, channel_base=512, channel_max=64)
  config.optimizer.update(g_lr=0.005, d_lr=0.005)
  config.loss.update(r1_gamma=0.0002 * 32 ** 2 / 32, pl_weight=0.0, style_mixing_prob=0.0)
  config.ema_kimg, config.ema_rampup = 32 * 10 / 32, 0.05
  config.log_every = 100
  config.checkpoint_every = 500
  return config
