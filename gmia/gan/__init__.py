"""StyleGAN2 training: losses and regularisers, generator EMA, the jitted step, the loop, sampling."""
