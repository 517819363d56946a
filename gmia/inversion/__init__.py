"""Gradient-based inversion: image priors, GAN latent projection, split-network feature inversion."""
