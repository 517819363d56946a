"""Runs code as a real multi-process JAX job on this machine: N processes x M CPU devices.

Every process joins the job through gmia.parallel.initialize_distributed() from the three
variables BUILD.md documents, with its own coordinator port on 127.0.0.1 and gloo collectives,
exactly as a user starts one. The processes run under a time limit; when one dies, the others
are killed and the failure names it with the end of its output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def job_environment(process: int, processes: int, devices: int, port: int) -> dict[str, str]:
  """The environment of one process of the job."""
  env = dict(os.environ)
  env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
              "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
              "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(process),
              "GMIA_HEARTBEAT_TIMEOUT": "10",  # A dead process stops the others within seconds.
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  return env


def run_job(commands: list[list[str]], devices: int, timeout: float = 300) -> list[str]:
  """Runs commands[i] as process i of a job (M = `devices` per process); returns their stdout.
  Raises RuntimeError when one fails (the others are killed) or the time runs out."""
  port = free_port()
  with tempfile.TemporaryDirectory() as logs:
    outputs = [open(os.path.join(logs, f"{i}.out"), "w+") for i in range(len(commands))]
    procs = [subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                              text=True, env=job_environment(i, len(commands), devices, port))
             for i, (command, output) in enumerate(zip(commands, outputs))]
    deadline = time.monotonic() + timeout
    failed = None
    try:
      while any(p.poll() is None for p in procs):
        failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
        if failed is not None or time.monotonic() > deadline:
          break
        time.sleep(0.2)
      failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), failed)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    texts = []
    for output in outputs:
      output.seek(0)
      texts.append(output.read())
      output.close()
  if failed is not None:
    raise RuntimeError(f"process {failed} of {len(commands)} failed (exit "
                       f"{procs[failed].returncode}):\n{texts[failed][-4000:]}")
  if any(p.returncode for p in procs):
    raise RuntimeError(f"the job of {len(commands)} processes ran out of its {timeout:.0f} s; "
                       "the end of each one's output:\n" + "\n".join(
                           f"[process {i}] {text[-1500:]}" for i, text in enumerate(texts)))
  return texts


def run_code(processes: int, devices: int, code: str, timeout: float = 300
             ) -> list[dict[str, np.ndarray]]:
  """Executes `code` in every process of a job after it joined; `code` assigns a dict of arrays
  to RESULT, returned per process."""
  with tempfile.TemporaryDirectory() as tmp:
    script = os.path.join(tmp, "job.py")
    with open(script, "w") as handle:
      handle.write("from gmia import parallel\nparallel.initialize_distributed()\nimport jax\n"
                   + textwrap.dedent(code)
                   + "\nimport numpy as _np\n_np.savez(sys.argv[1], "
                   "**{k: _np.asarray(v) for k, v in RESULT.items()})\n")
    outs = [os.path.join(tmp, f"result_{i}.npz") for i in range(processes)]
    run_job([[sys.executable, "-c", f"import sys; exec(open({script!r}).read())", out]
             for out in outs], devices, timeout)
    results = []
    for out in outs:
      with np.load(out) as data:
        results.append({k: data[k] for k in data.files})
    return results
