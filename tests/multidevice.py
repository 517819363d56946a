"""Runs code under N simulated CPU devices in a fresh process.

The device count of a JAX process is fixed when JAX starts, so multi-device checks run their
code in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N` and hand results
back as an .npz file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np


def run_with_devices(num_devices: int, code: str, timeout: float = 300,
                     env: dict[str, str] | None = None) -> dict[str, np.ndarray]:
  """Executes `code` with `num_devices` CPU devices and returns the arrays it saved.

  `code` must assign a dict of arrays to `RESULT`; it runs with the repository on sys.path and
  the variables of `env` added to the environment.
  """
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.npz")
    script = (textwrap.dedent(code)
              + f"\nimport numpy as _np\n_np.savez({out!r}, **{{k: _np.asarray(v) for k, v in RESULT.items()}})\n")
    env = {**os.environ, **(env or {})}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=repo, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode:
      raise RuntimeError(f"subprocess with {num_devices} devices failed:\n{proc.stderr[-4000:]}")
    with np.load(out) as data:
      return {k: data[k] for k in data.files}
