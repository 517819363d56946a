"""Diffusion models as targets: DDPM noise schedules, the DDPM / DDIM samplers (sample i a pure
function of (seed, i)), and DDPM training as a task of gmia.training."""
