"""Split-network victims: a small ResNet classifier of the encoder identities and its training."""
