"""What going multi-process costs the identity attack on one machine.

  python bench/bench_multihost.py [--samples=512,2048] [--chunk_size=256]

The attack (tiny freshly initialised gmia generator and demo-sized encoder, bench_attack's) on
1 process x 2 devices and on 2 processes x 1 device (127.0.0.1, gloo), each at two sample
counts: samples/s = the difference in samples over the difference in wall time, so start-up and
compilation cancel. On 2 cores no speed-up is expected: the number is the overhead of the
coordination (a collective per chunk, a barrier per saved chunk).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_attack import tiny_models  # noqa: E402
from tests.multiprocess import REPO, job_environment, free_port  # noqa: E402

_SAMPLES = flags.DEFINE_string("samples", "512,2048", "The two sample counts.")


def seconds(generator: str, encoder: str, workdir: str, samples: int, processes: int) -> float:
  command = [sys.executable, "-m", "attack.membership", f"--workdir={workdir}",
             f"--config.generator={generator}", f"--config.matcher.path={encoder}",
             f"--config.num_samples={samples}", f"--config.chunk_size={flags.FLAGS.chunk_size}",
             "--config.bootstrap_resamples=10"]
  started = time.perf_counter()
  if processes == 1:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
  else:
    port = free_port()
    procs = [subprocess.Popen(command, cwd=REPO, env=job_environment(i, processes, 1, port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(processes)]
    if any(p.wait() for p in procs):
      raise RuntimeError(f"the {processes}-process attack failed")
  return time.perf_counter() - started


def main(argv):
  del argv
  small, large = (int(n) for n in _SAMPLES.value.split(","))
  with tempfile.TemporaryDirectory() as root:
    generator, encoder = tiny_models(root)
    for processes, label in ((1, "1 process x 2 devices"), (2, "2 processes x 1 device")):
      times = [seconds(generator, encoder, os.path.join(root, f"{label}-{n}"), n, processes)
               for n in (small, large)]
      print(f"{label}: {(large - small) / (times[1] - times[0]):8.1f} samples/s "
            f"({times[0]:.1f} s for {small}, {times[1]:.1f} s for {large} samples)")


if __name__ == "__main__":
  app.run(main)
