r"""The diffusion target for CPU: a 32 px DDPM trained on the member identities of the embedded
synthetic_faces data set in about the budget of gan_cpu_demo.py (2,000 steps of 32 photos).

  python -m train.train_diffusion --config=train/configs/diffusion_cpu_demo.py \
      --workdir=/tmp/diffusion_demo

A U-Net of 16, 32 and 64 channels at 32, 16 and 8 px, one resnet block per resolution and
attention only in the mid block (at 8 px): on 2 CPU cores attention at 16 px doubled the cost of a
step (the backward of a 256 x 256 softmax per head) and 32 channels at 32 px tripled it.
Measured on 2 CPU cores shared with other jobs (load 9-16): the 2,000 steps (with compilation and
four sample grids) took 12.6 minutes of CPU time, 0.38 s a step (43 minutes of wall clock under
that load). Nichol & Dhariwal's cosine schedule and Adam at 2e-3 (ten
times DDPM's 2e-4: a small network in a short run): with DDPM's linear schedule and 1e-3, the
DDIM grids were still grey noise at step 1,000 (the network's error at t = 999 stayed at 0.016,
where predicting x_t itself errs by 5e-6); with these, the grids of steps 1,000 to 2,000 show heads
with eyes and mouths on coloured backgrounds, still grainy. EMA of 0.995 (about 200 steps).
"""

from gmia.diffusion import trainer


def get_config():
  config = trainer.default_config()
  config.data.resolution = 32
  config.batch_size = 32
  config.num_steps = 2000
  config.model.update(
      block_out_channels=(16, 32, 64),
      down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
      layers_per_block=1, norm_num_groups=8)
  config.schedule.beta_schedule = "squaredcos_cap_v2"
  config.optimizer.update(learning_rate=2e-3, warmup_steps=200)
  config.ema_decay = 0.995
  config.log_every = 100
  config.checkpoint_every = 500
  config.grid_size = 32
  return config
