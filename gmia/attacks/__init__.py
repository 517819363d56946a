"""The scoring mathematics of the attacks: per-person evidence from a generator's samples and its
variants (best, top-k, count, density ratio), calibration, likelihood ratios over shadow
generators, person-level tests, exposure, and the people and samples they are computed on."""
