"""The multi-device harness really gives the requested device count."""

from tests.multidevice import run_with_devices


def test_subprocess_sees_requested_devices():
  result = run_with_devices(8, "import jax\nRESULT = {'n': jax.device_count()}")
  assert int(result["n"]) == 8
