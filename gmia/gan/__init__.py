"""StyleGAN2 training as a task of gmia.training: losses, regularisers, generator EMA, the jitted
step, and a jitted sampler for its grids."""
