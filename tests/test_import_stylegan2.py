"""NVIDIA stylegan2-ada-pytorch pickles: the restricted reader and the import, against NVIDIA.

Fixtures (tests/fixtures/stylegan2/): NAME.pkl and NAME.npz for two tiny random networks built
with NVIDIA's stylegan2-ada-pytorch (commit d72cc7d, torch 2.13 on CPU, its reference ops):
- cond32: `training.networks.Generator(z_dim=16, w_dim=16, c_dim=5, img_resolution=32,
  img_channels=3, mapping_kwargs={num_layers: 2}, synthesis_kwargs={channel_base: 128,
  channel_max: 16, num_fp16_res: 4, conv_clamp: 256})` and `Discriminator(c_dim=5,
  img_resolution=32, img_channels=3, architecture='orig', channel_base=128, channel_max=16,
  num_fp16_res=4, conv_clamp=256, epilogue_kwargs={mbstd_group_size: 32})`: NVIDIA's cifar
  config at small widths, conditional.
- uncond64: `Generator(z_dim=16, w_dim=16, c_dim=0, img_resolution=64, img_channels=3,
  mapping_kwargs={num_layers: 8, layer_features: 12, lr_multiplier: 0.05},
  synthesis_kwargs={channel_base: 256, channel_max: 16, num_fp16_res: 4, conv_clamp: 0.6})` and
  a 'resnet' `Discriminator(... conv_clamp=0.6, epilogue_kwargs={mbstd_group_size: 2})`; the
  clamp of 0.6 clips 12-49% of every synthesis layer's outputs, so clamping is exercised.
Every noise_strength was drawn from U(0.2, 1), every bias shifted by N(0, 0.3^2) (in effective
units), w_avg drawn from N(0, 1); G_ema is G perturbed again at half that scale. The pickles are
what NVIDIA's training_loop writes, `pickle.dump(dict(training_set_kwargs=..., G=..., D=...,
G_ema=..., augment_pipe=None))` of `copy.deepcopy(module).eval().requires_grad_(False).cpu()`,
except that each persistent class's `_orig_module_src` was set to a one-line placeholder first.
The .npz holds, for fixed z ~ N(0, 1) (c: one-hot labels 0, 1, 2): `G_ema.mapping(z, c)` with
truncation_psi 1 and 0.7 and (0.7, truncation_cutoff) (ws, ws_psi07, ws_psi07_cutoff),
`G_ema.mapping.w_avg`, `G_ema(z, c, truncation_psi, truncation_cutoff, noise_mode='const',
force_fp32=True)` for the same three settings (img*, NCHW transposed to NHWC), for cond32 also
`G_ema.synthesis(ws, noise_mode='none', force_fp32=True)` and `G(z, c, noise_mode='const',
force_fp32=True)`, and `D(img, c, force_fp32=True)` (d_logits).

To check a real pickle (e.g. NVIDIA's ffhq.pkl) the same way, record those calls with NVIDIA's
code on it and compare with `import_stylegan2.load_generator` (README.md shows how).
"""

import os
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia import sources, viz
from gmia.jobs import reconstruction
from gmia.gan import sampling
from gmia.inversion import latent
from gmia.models import import_stylegan2, nvidia_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "stylegan2")
TOLERANCE = 1e-4


def fixture(name):
  return os.path.join(FIXTURES, f"{name}.pkl"), dict(np.load(os.path.join(FIXTURES,
                                                                        f"{name}.npz")))


@pytest.fixture(scope="module")
def class0():
  """The cond32 generator fixed to class 0, and the fixture's outputs."""
  path, ref = fixture("cond32")
  return import_stylegan2.load_generator(path, class_idx=0), ref


def generator_outputs(generator, g_vars, ref):
  """Everything the fixture records, from one compiled function."""
  cutoff = int(ref["truncation_cutoff"])
  c = jnp.asarray(ref["c"]) if generator.c_dim else None

  @jax.jit
  def run(g_vars, z):
    ws = lambda psi, cut=None: generator.apply(g_vars, z, psi, cut, method="map", c=c)
    img = lambda psi, cut=None: generator.apply(g_vars, z, psi, cut, "const", c)
    out = {"ws": ws(1.0), "ws_psi07": ws(0.7), "ws_psi07_cutoff": ws(0.7, cutoff),
           "img": img(1.0), "img_psi07": img(0.7), "img_psi07_cutoff": img(0.7, cutoff)}
    if "img_noise_none" in ref:
      out["img_noise_none"] = generator.apply(g_vars, out["ws"], "none", method="synthesize")
    return out

  return jax.tree.map(np.asarray, run(g_vars, jnp.asarray(ref["z"])))


@pytest.mark.parametrize("name", ["cond32", "uncond64"])
def test_generator_reproduces_nvidias_outputs(name):
  path, ref = fixture(name)
  generator, g_vars, info = import_stylegan2.load_generator(path)
  assert info.network == "G_ema" and info.data.resolution == ref["img"].shape[1]
  assert generator.c_dim == ref["c"].shape[1]
  np.testing.assert_array_equal(g_vars["buffers"]["mapping"]["w_avg"], ref["w_avg"])
  got = generator_outputs(generator, g_vars, ref)
  for key, value in got.items():
    assert np.abs(ref[key]).max() > 0.3, key  # the reference is not trivially small
    np.testing.assert_allclose(value, ref[key], atol=TOLERANCE, rtol=0, err_msg=key)
  # Truncation and the cutoff change the output, so the comparisons above tell them apart.
  assert np.abs(ref["img_psi07"] - ref["img_psi07_cutoff"]).max() > 1e-2


def test_raw_generator_and_fixed_class_reproduce_nvidia():
  path, ref = fixture("cond32")
  generator, g_vars, info = import_stylegan2.load_generator(path, use_ema=False)
  assert info.network == "G"
  z, c = jnp.asarray(ref["z"]), jnp.asarray(ref["c"])
  raw = jax.jit(lambda v: generator.apply(v, z, 1.0, None, "const", c))(g_vars)
  np.testing.assert_allclose(raw, ref["img_raw_G"], atol=TOLERANCE, rtol=0)
  assert np.abs(ref["img_raw_G"] - ref["img"]).max() > 1e-2
  with pytest.raises(ValueError, match="class labels c"):
    generator.apply(g_vars, z, method="map")
  _, _, info = import_stylegan2.load_generator(path, class_idx=1)
  assert info.class_idx == 1 and info.model.c_dim == 0
  generator, g_vars = import_stylegan2.import_generator(
      nvidia_pickle.read_pickle(path)["G_ema"])
  run = None
  for k in range(len(z)):  # row k of the fixture has class k
    fixed, fixed_vars = import_stylegan2.fix_class(generator, g_vars, k)
    assert fixed.c_dim == 0 and "embed" not in fixed_vars["params"]["mapping"]
    run = run or jax.jit(lambda v, z: fixed.apply(v, z, 0.7, None, "const"))
    np.testing.assert_allclose(run(fixed_vars, z[k:k + 1]), ref["img_psi07"][k:k + 1],
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["cond32", "uncond64"])
def test_discriminator_reproduces_nvidia(name):
  path, ref = fixture(name)
  discriminator, d_vars, info = import_stylegan2.load_discriminator(path)
  c = jnp.asarray(ref["c"]) if discriminator.c_dim else None
  logits = jax.jit(discriminator.apply)(d_vars, jnp.asarray(ref["img"]), c)
  np.testing.assert_allclose(logits, ref["d_logits"], atol=TOLERANCE, rtol=1e-4)
  assert info.model.architecture == ("orig" if name == "cond32" else "resnet")


def test_sampling_projection_and_gan_leaks_run_jitted_on_the_import(class0):
  (generator, g_vars, _), ref = class0
  images = sampling.generate(generator, g_vars, seed=3, num=3, batch_size=4)
  direct = jax.jit(lambda v, z: generator.apply(v, z, noise_mode="const"))(
      g_vars, sampling.latents(3, 3, generator.z_dim))
  np.testing.assert_allclose(images, direct, atol=1e-5)
  # GAN-Leaks' black-box distance on the imported samples: sample 0 against the two others,
  # against numpy's brute force.
  distances = reconstruction.nearest_sample_distance(jnp.asarray(images[:1]),
                                                     jnp.asarray(images[1:]))
  expected = min(np.linalg.norm(np.asarray(images[0], np.float64) - other) for other in images[1:])
  assert expected > 1
  np.testing.assert_allclose(distances, [expected], rtol=1e-4)
  targets = jnp.asarray(ref["img"][:2])
  keys = latent.target_keys(0, np.arange(len(targets)))
  for w_plus, noise_mode in ((False, "none"), (True, "const")):
    settings = latent.ProjectionSettings(num_steps=8, w_plus=w_plus, noise_mode=noise_mode,
                                         w_avg_samples=256, lr_rampup_length=0.2)
    out = latent.make_projector(generator, settings)(g_vars, None, targets, keys)
    assert out["ws"].shape == (2, 8, generator.w_dim)
    assert np.all(np.asarray(out["pixel_mse"]) < np.asarray(out["start_mse"]))
    spread = np.asarray(out["ws"]).std(axis=1).max()
    assert (spread > 1e-4) == w_plus  # W+ moves each layer's w on its own


def test_sample_command_samples_a_pickle(class0, tmp_path):
  (generator, g_vars, _), _ = class0
  subprocess.run([sys.executable, "-m", "attack.sample", f"--workdir={tmp_path}",
                  f"--config.generator=stylegan2_pkl:{fixture('cond32')[0]}",
                  "--config.class_idx=0", "--config.num=2", "--config.seed=5"],
                 check=True, capture_output=True)
  # Sample i is G(z_i) of class 0, z_i drawn from (seed, i), constant noise, clipped to [-1, 1].
  z = sources.latents(5, np.arange(2), (generator.z_dim,))
  want = viz.to_uint8(np.clip(generator.apply(g_vars, z, 1.0, None, "const"), -1, 1))
  np.testing.assert_allclose(np.load(tmp_path / "samples.npz")["images"], want, atol=1)


def write_pickle(tmp_path, obj, name="net.pkl"):
  path = tmp_path / name
  path.write_bytes(pickle.dumps(obj))
  return str(path)


class SystemCall:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def test_a_pickle_calling_os_system_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "ran"
  path = write_pickle(tmp_path, {"G_ema": SystemCall(f"touch {marker}")})
  with pytest.raises(nvidia_pickle.PickleError) as error:
    nvidia_pickle.read_pickle(path)
  message = str(error.value)
  assert f"global {os.system.__module__}.system" in message and path in message
  assert "\n" not in message
  assert not marker.exists()
  with open(path, "rb") as f:
    pickle.load(f)  # what the reader refuses would have run the command
  assert marker.exists()


@pytest.mark.parametrize("obj, named", [
    (__import__("collections").Counter(a=1), "collections.Counter"),
    ({"G_ema": types.SimpleNamespace(x=1)}, "types.SimpleNamespace"),
    ({"f": eval}, "builtins.eval"),
])
def test_unknown_globals_give_one_line_naming_them(tmp_path, obj, named):
  path = write_pickle(tmp_path, obj)
  with pytest.raises(nvidia_pickle.PickleError, match=f"global {named} is not on the allow-list"
                     ) as error:
    nvidia_pickle.read_pickle(path)
  assert "\n" not in str(error.value)


def install_global(monkeypatch, module, name, obj):
  """Makes `obj` picklable as module.name, in modules that exist for this test only."""
  parts = module.split(".")
  for i in range(1, len(parts) + 1):
    monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
  obj.__module__, obj.__qualname__ = module, name
  setattr(sys.modules[module], name, obj)


class Persistent:
  """Pickles as NVIDIA's persistence wrapper does: _reconstruct_persistent_obj(meta)."""

  def __init__(self, class_name, module_src, modules=None):
    self.meta = {"type": "class", "version": 6, "module_src": module_src,
                 "class_name": class_name,
                 "state": {"training": False, "_parameters": {}, "_buffers": {},
                           "_modules": modules or {}}}

  def __reduce__(self):
    return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def test_stylegan3_is_named_and_embedded_source_never_runs(tmp_path, monkeypatch):
  install_global(monkeypatch, "torch_utils.persistence", "_reconstruct_persistent_obj",
                 lambda meta: None)
  marker = tmp_path / "source_ran"
  src = f"open({str(marker)!r}, 'w').close()\n"
  synthesis = Persistent("SynthesisNetwork", src, {"input": Persistent("SynthesisInput", src),
                                                   "L0_36_512": Persistent("SynthesisLayer", src)})
  g = Persistent("Generator", src, {"mapping": Persistent("MappingNetwork", src),
                                    "synthesis": synthesis})
  path = write_pickle(tmp_path, {"G_ema": g, "G": g, "D": Persistent("Discriminator", src)})
  record = nvidia_pickle.read_pickle(path)["G_ema"]
  assert record.modules["synthesis"].modules["input"].class_name == "SynthesisInput"
  with pytest.raises(ValueError, match=r"StyleGAN3 .*training\.networks_stylegan3") as error:
    import_stylegan2.load_generator(path)
  assert path in str(error.value) and "\n" not in str(error.value)
  assert not marker.exists()


def test_tensorflow_pickles_are_named(tmp_path, monkeypatch):
  network = type("Network", (), {})
  install_global(monkeypatch, "dnnlib.tflib.network", "Network", network)
  path = write_pickle(tmp_path, (network(), network(), network()))
  with pytest.raises(nvidia_pickle.PickleError,
                     match=r"TensorFlow StyleGAN/StyleGAN2 .*dnnlib\.tflib\.network\.Network"):
    nvidia_pickle.read_pickle(path)


def test_unreadable_files_are_one_line_errors(tmp_path):
  data = open(fixture("cond32")[0], "rb").read()
  truncated = tmp_path / "truncated.pkl"
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(nvidia_pickle.PickleError, match="not a readable network pickle"):
    nvidia_pickle.read_pickle(str(truncated))
  archive = tmp_path / "model.pt"
  archive.write_bytes(b"PK\x03\x04" + b"\0" * 32)
  with pytest.raises(nvidia_pickle.PickleError, match="zip archive"):
    nvidia_pickle.read_pickle(str(archive))
  with pytest.raises(ValueError, match="no network 'G_ema'"):
    import_stylegan2.load_generator(write_pickle(tmp_path, {"G": 1}))


def break_record(g, change):
  """A copy of the tiny generator record with one field or tensor changed."""
  if change == "missing tensor":
    del g.modules["mapping"].modules["fc1"].tensors["bias"]
  elif change == "resnet synthesis":
    g.modules["synthesis"].modules["b16"].attributes["architecture"] = "resnet"
  elif change == "other filter":
    g.modules["synthesis"].modules["b16"].tensors["resample_filter"] = np.full((4, 4), 1 / 16)
  elif change == "wrong shape":
    weight = g.modules["synthesis"].modules["b8"].modules["conv1"].tensors["weight"]
    g.modules["synthesis"].modules["b8"].modules["conv1"].tensors["weight"] = weight[:, :8]
  return g


@pytest.mark.parametrize("change, message", [
    ("missing tensor", r"G\.mapping\.fc1\.bias: tensor missing"),
    ("resnet synthesis", r"G\.synthesis\.b16: synthesis architecture 'resnet'"),
    ("other filter", r"G\.synthesis\.b16: resampling filter"),
    ("wrong shape", r"G\.synthesis\.b8\.conv1\.weight: shape"),
])
def test_unsupported_or_inconsistent_networks_name_the_cause(change, message):
  g = nvidia_pickle.read_pickle(fixture("cond32")[0])["G_ema"]
  with pytest.raises(ValueError, match=message):
    import_stylegan2.import_generator(break_record(g, change))
