"""StyleGAN2 training as a task of gmia.training: losses, regularisers, the jitted
step, and a jitted sampler for its grids."""
