"""StyleGAN2 training: losses, regularisers, generator EMA, the jitted step, the loop, sampling."""
