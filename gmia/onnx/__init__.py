"""Any ONNX network as a pure JAX function: `net = import_onnx(path)`; `net.apply(params, x)`."""

from gmia.onnx.graph import OnnxNetwork, import_onnx, load_model
from gmia.onnx.ops import OPS

__all__ = ["OPS", "OnnxNetwork", "import_onnx", "load_model"]
