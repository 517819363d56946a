"""Flax modules: generators, discriminators, face-recognition backbones and their heads."""
