"""Bad .onnx files given to gmia.onnx: each a one-line ValueError naming the file and the
problem, with memory bounded (nothing allocated that a file merely declares).

The table covers an empty file, truncations at several points, a text file, random bytes, a
directory and a missing path, external data outside the model's folder (relative and absolute),
missing or shorter than declared, a tensor whose dims promise more than its data, and graphs
whose constants would be folded into absurd arrays at import (ConstantOfShape, Range, Expand).
The folding limit is lowered for the test, so that a broken guard would allocate megabytes, not
gigabytes, and be seen by tracemalloc (numpy reports its buffers to it).
"""

import os
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gmia.onnx import graph, import_onnx, load_model  # noqa: E402

FOLD_LIMIT = 1 << 20  # Bytes, for the test (gmia's is 2 GiB).
PEAK_LIMIT = 16 << 20  # Python-side peak allowed while refusing a file.


def good_model():
  """y = relu(x @ w + b), a 4 x 8 weight: a valid model of a few hundred bytes."""
  rng = np.random.default_rng(0)
  nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
           helper.make_node("Relu", ["a"], ["y"])]
  weights = [numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b")]
  return helper.make_model(helper.make_graph(
      nodes, "good", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], weights))


def save(proto, path):
  onnx.save(proto, str(path))


def write(data):
  def make(path):
    path.write_bytes(data(path) if callable(data) else data)
  return make


def truncated(fraction):
  def make(path):
    data = good_model().SerializeToString()
    path.write_bytes(data[:max(1, int(len(data) * fraction))])
  return make


def external(location, length=None, extra_file=None):
  """The weight `w` stored as external data at `location` (relative to the model's folder)."""
  def make(path):
    if extra_file:
      (path.parent / extra_file[0]).write_bytes(extra_file[1])
    proto = good_model()
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    fields = {"location": location, **({"length": str(length)} if length else {})}
    for key, value in fields.items():
      entry = tensor.external_data.add()
      entry.key, entry.value = key, value
    save(proto, path)
  return make


def declared_dims(path):
  proto = good_model()
  tensor = proto.graph.initializer[0]
  del tensor.dims[:]
  tensor.dims.extend([1 << 20, 1 << 20])  # 4 TiB promised, 128 bytes held.
  save(proto, path)


def folding(nodes, initializers):
  """A graph whose constant subgraph `nodes` computes `c`, then y = x + c."""
  def make(path):
    graph_nodes = nodes + [helper.make_node("Add", ["x", "c"], ["y"])]
    save(helper.make_model(helper.make_graph(
        graph_nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])), path)
  return make


def directory(path):
  path.mkdir()


def missing(path):
  pass


def no_graph(path):
  path.write_bytes(helper.make_opsetid("", 17).SerializeToString())  # An OperatorSetId.


BIG = 1 << 12  # BIG x BIG float32 = 64 MiB: above FOLD_LIMIT, harmless if the guard broke.
CASES = {
    "empty": (write(b""), "the file is empty"),
    "truncated_to_one_byte": (truncated(0), "truncated"),
    "truncated_at_a_quarter": (truncated(0.25), "truncated"),
    "truncated_at_half": (truncated(0.5), "truncated"),
    "truncated_at_three_quarters": (truncated(0.75), "truncated"),
    "truncated_by_one_byte": (write(lambda _: good_model().SerializeToString()[:-1]),
                              "truncated"),
    "text": (write(b"This is not a model.\nJust a text file named .onnx.\n"), "not an ONNX"),
    "random_bytes": (write(np.random.default_rng(0).bytes(4096)), "not an ONNX"),
    "another_message": (no_graph, "not an ONNX"),
    "directory": (directory, "not a file"),
    "missing": (missing, "no such file"),
    "external_data_outside_folder": (external("../../../../etc/passwd"), "external data"),
    "external_data_absolute": (external("/etc/passwd"), "external data"),
    "external_data_missing": (external("weights.bin"), "external data"),
    "external_data_shorter_than_declared": (
        external("weights.bin", length=1 << 40, extra_file=("weights.bin", b"\0" * 16)),
        "external data"),
    "dims_larger_than_data": (declared_dims, "cannot be read"),
    "constant_of_shape_absurd": (folding(
        [helper.make_node("ConstantOfShape", ["shape"], ["c"])],
        {"shape": np.array([BIG, BIG], np.int64)}), "more than gmia.onnx folds"),
    "expand_absurd": (folding(
        [helper.make_node("Expand", ["one", "shape"], ["c"])],
        {"one": np.ones(1, np.float32), "shape": np.array([BIG, BIG], np.int64)}),
        "more than gmia.onnx folds"),
    "range_absurd": (folding(
        [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
         helper.make_node("Cast", ["r"], ["c"], to=TensorProto.FLOAT)],
        {"start": np.int64(0), "limit": np.int64(BIG * BIG), "delta": np.int64(1)}),
        "more than gmia.onnx folds"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_a_one_line_error(case, tmp_path, monkeypatch):
  make, problem = CASES[case]
  folder = tmp_path / "models" / "deeper"
  folder.mkdir(parents=True)
  path = folder / "model.onnx"
  make(path)
  monkeypatch.setattr(graph, "MAX_FOLDED_BYTES", FOLD_LIMIT)
  tracemalloc.start()
  try:
    with pytest.raises(ValueError) as error:
      import_onnx(str(path))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{path}: ") and problem in message
  assert peak < PEAK_LIMIT, f"{peak} bytes allocated while refusing {case}"


def test_good_model_and_its_external_data_load(tmp_path):
  # The fault cases are changes of this file: it imports, with its weights inside or beside it.
  path = str(tmp_path / "good.onnx")
  proto = good_model()
  w, b = (numpy_helper.to_array(t) for t in proto.graph.initializer)
  onnx.save(proto, path, save_as_external_data=True, location="weights.bin",
            size_threshold=0)
  assert os.path.exists(tmp_path / "weights.bin")
  net = import_onnx(path)
  x = np.arange(8, dtype=np.float32).reshape(2, 4)
  np.testing.assert_allclose(net.apply(net.params, x), np.maximum(x @ w + b, 0), rtol=1e-6)
  assert load_model(path, external_data=False).graph.initializer[0].data_location == (
      TensorProto.EXTERNAL)
