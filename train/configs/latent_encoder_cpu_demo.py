r"""A latent encoder for the CPU demo generator (32 px, w_dim 64): 2,000 steps, a few minutes.

  python -m train.train_latent_encoder --config=train/configs/latent_encoder_cpu_demo.py \
      --workdir=/tmp/latent_encoder --config.generator=gmia:/tmp/gan_demo

bench/bench_latent_encoder.py trains one and measures what it saves the projection: the steps a
w_avg start needs to reach the encoder start's error, and the errors at equal steps.
"""

from gmia.inversion import latent_encoder_training


def get_config():
  config = latent_encoder_training.default_config()
  config.num_steps = 2000
  config.batch_size = 32
  return config
