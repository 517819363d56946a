"""gmia: audit face generators and split networks for leaks of the people they were trained on.

Packages stand on floors; a module imports only from its own floor or the floors below it, and
no two packages import each other (tests/test_layers.py checks both from the code's imports):

  jobs       jobs/: one module per command, config + workdir -> report files
  math       attacks/ (scores, calibration, likelihood and density ratios, p-values),
             inversion/ (projection, feature inversion, priors, judges, decoders)
  services   faces/ (detection, alignment, matchers), sources/ (every generator kind),
             training/ (the one loop), privacy/, and each model's trainer: gan/, diffusion/,
             face_encoder/, classifier/
  runs       runs.py: load_run, the one reader of trained workdirs
  models     models/: Flax modules, their importers and preprocessing presets
  base       files fingerprint finite parallel progress metrics quality viz workdir checkpoint
             cli, onnx/ (any ONNX graph as JAX), kernels/ (streamed similarity), data/

The command lines in attack/ and train/ sit above all of them.
"""

__version__ = "0.1.0"
