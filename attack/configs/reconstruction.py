"""Reconstruction (GAN-Leaks) attacks on a generator: black-box, white-box, calibrated.

  python -m attack.reconstruction --workdir=runs/gan_leaks --config.generator=gmia:runs/demo/gan \
      --config.reference_generator=gmia:runs/demo/gan_control --config.projection.num_steps=500
"""

from gmia.jobs import reconstruction


def get_config():
  return reconstruction.default_config()
