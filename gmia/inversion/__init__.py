"""Inversion: image priors, GAN latent projection, split-network feature inversion, judges of who a
reconstruction shows, and the trained decoders and latent encoders with their trainers."""
