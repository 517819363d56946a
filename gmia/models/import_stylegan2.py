"""NVIDIA stylegan2-ada-pytorch networks as gmia StyleGAN2 modules and their variables.

The pickle is read by gmia.models.nvidia_pickle (no torch, nothing from the file executed). What
NVIDIA's train.py builds loads: configs cifar, paper256/512/1024, stylegan2 and auto, conditional
or not, any resolution, mixed precision or not (gmia computes in fp32, as NVIDIA's
`force_fp32=True`; `conv_clamp` is applied as NVIDIA applies it in fp32 too), mapping networks of
any layer count, width and lr multiplier, Freeze-D. Refused with an error naming the cause:
StyleGAN3 generators, synthesis architectures other than 'skip' (NVIDIA's configs use 'skip'), a
'skip' discriminator, activations other than lrelu, resampling filters other than [1, 3, 3, 1].

Names carry over (`mapping.fc0.weight` -> params/mapping/fc0/weight); layouts change: conv
weights [out, in, kh, kw] -> [kh, kw, in, out], dense weights [out, in] -> [in, out], `const`
[C, 4, 4] -> [4, 4, C], the discriminator's `b4.fc` rows from the [C, H, W] flatten order to
[H, W, C]. `w_avg` and `noise_const` become buffers; every shape is checked against the gmia
module built from the pickle's settings.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from gmia.models import nvidia_pickle, stylegan, stylegan_ops
from gmia.models.nvidia_pickle import TorchModule

BUFFERS = ("w_avg", "noise_const")


def _filter_2d() -> np.ndarray:
  taps = np.asarray(stylegan_ops.RESAMPLE_TAPS, np.float64)
  return np.outer(taps, taps) / np.outer(taps, taps).sum()


def _field(module: TorchModule, name: str, where: str) -> Any:
  if name not in module.attributes:
    raise ValueError(f"{where} ({module.class_name}) has no field {name!r}")
  value = module.attributes[name]
  return value.item() if isinstance(value, np.generic) else value


def _child(module: TorchModule, name: str, where: str) -> TorchModule:
  if name not in module.modules:
    raise ValueError(f"{where} ({module.class_name}) has no submodule {name!r}")
  return module.modules[name]


def _check_class(module: TorchModule, expected: str, where: str) -> None:
  if module.class_name != expected:
    raise ValueError(f"{where} is a {module.class_name!r}, expected NVIDIA's {expected!r}")


def _one_value(values: set, what: str, where: str) -> Any:
  if len(values) != 1:
    raise ValueError(f"{where}: layers differ in {what} ({sorted(map(str, values))}); gmia uses "
                     "one value per network")
  return values.pop()


def _check_layers(modules: dict[str, TorchModule], where: str) -> None:
  """The activations gmia's layers have (linear affine, embed, out and skip layers; lrelu
  elsewhere) and NVIDIA's default resampling filter everywhere."""
  for path, module in modules.items():
    activation = module.attributes.get("activation")
    expected = "linear" if path.split(".")[-1] in ("affine", "embed", "out", "skip") else "lrelu"
    if activation is not None and activation != expected:
      raise ValueError(f"{where}.{path}: activation {activation!r} is not supported here (gmia's "
                       f"layer is {expected})")
    filt = module.tensors.get("resample_filter")
    if filt is not None and (filt.shape != (4, 4) or not np.allclose(filt, _filter_2d())):
      raise ValueError(f"{where}.{path}: resampling filter {np.round(filt, 4).tolist()} is not "
                       "NVIDIA's default [1, 3, 3, 1], the only one supported")


def _mapping_settings(mapping: TorchModule, w_dim: int, where: str) -> dict:
  num_layers = int(_field(mapping, "num_layers", where))
  layers = [_child(mapping, f"fc{i}", where) for i in range(num_layers)]
  lr = _one_value({float(_field(fc, "bias_gain", where)) for fc in layers}, "lr multiplier",
                  where)
  features = layers[0].tensors["weight"].shape[0] if num_layers > 1 else w_dim
  embed = mapping.modules.get("embed")
  embed_features = embed.tensors["weight"].shape[0] if embed is not None else w_dim
  return {"num_layers": num_layers, "lr_multiplier": lr,
          "layer_features": None if features == w_dim else int(features),
          "embed_features": None if embed_features == w_dim else int(embed_features)}


def generator_settings(g: TorchModule) -> dict:
  """Keyword arguments of the stylegan.Generator that computes NVIDIA's Generator record `g`."""
  if any(m.class_name == "SynthesisInput" for m in g.named_modules().values()):
    raise ValueError("StyleGAN3 generator (training.networks_stylegan3: SynthesisInput and "
                     "L*_*_* layers) is not supported; gmia implements StyleGAN2")
  _check_class(g, "Generator", "G")
  mapping, synthesis = _child(g, "mapping", "G"), _child(g, "synthesis", "G")
  _check_class(mapping, "MappingNetwork", "G.mapping")
  _check_class(synthesis, "SynthesisNetwork", "G.synthesis")
  w_dim = int(_field(g, "w_dim", "G"))
  resolution = int(_field(g, "img_resolution", "G"))
  stylegan.check_resolution(resolution)
  if _field(mapping, "w_avg_beta", "G.mapping") is None:
    raise ValueError("G.mapping tracks no w_avg (w_avg_beta None): truncation is undefined")
  blocks = {f"b{2 ** i}": _child(synthesis, f"b{2 ** i}", "G.synthesis")
            for i in range(2, resolution.bit_length())}
  for name, block in blocks.items():
    architecture = _field(block, "architecture", f"G.synthesis.{name}")
    if architecture != "skip":
      raise ValueError(f"G.synthesis.{name}: synthesis architecture {architecture!r} is not "
                       "supported (only 'skip', which every NVIDIA config uses)")
  modules = synthesis.named_modules()
  layers = {p: m for p, m in modules.items() if m.class_name in ("SynthesisLayer", "ToRGBLayer")}
  if not all(m.attributes.get("use_noise", True) for m in layers.values()):
    raise ValueError("G.synthesis: layers without noise inputs (use_noise=False) are not "
                     "supported")
  _check_layers(modules, "G.synthesis")
  _check_layers(mapping.named_modules(), "G.mapping")
  clamp = _one_value({m.attributes.get("conv_clamp") for m in layers.values()}, "conv_clamp",
                     "G.synthesis")
  m = _mapping_settings(mapping, w_dim, "G.mapping")
  kwargs = synthesis.init_kwargs
  return {"z_dim": int(_field(g, "z_dim", "G")), "w_dim": w_dim, "img_resolution": resolution,
          "img_channels": int(_field(g, "img_channels", "G")),
          "mapping_layers": m["num_layers"], "mapping_lr_multiplier": m["lr_multiplier"],
          "w_avg_beta": float(_field(mapping, "w_avg_beta", "G.mapping")),
          "channel_base": int(kwargs.get("channel_base", 32768)),
          "channel_max": int(kwargs.get("channel_max", 512)),
          "c_dim": int(_field(g, "c_dim", "G")), "mapping_layer_features": m["layer_features"],
          "embed_features": m["embed_features"],
          "conv_clamp": None if clamp is None else float(clamp)}


def discriminator_settings(d: TorchModule) -> dict:
  """Keyword arguments of the stylegan.Discriminator that computes NVIDIA's record `d`."""
  _check_class(d, "Discriminator", "D")
  resolution = int(_field(d, "img_resolution", "D"))
  stylegan.check_resolution(resolution)
  blocks = [_child(d, f"b{2 ** i}", "D") for i in range(3, resolution.bit_length())]
  architecture = _one_value({_field(b, "architecture", "D") for b in blocks}, "architecture", "D")
  if architecture not in ("resnet", "orig"):
    raise ValueError(f"D: discriminator architecture {architecture!r} is not supported "
                     "('resnet' or 'orig')")
  modules = d.named_modules()
  _check_layers(modules, "D")
  clamp = _one_value({m.attributes.get("conv_clamp") for p, m in modules.items()
                      if p.split(".")[-1] in ("fromrgb", "conv0", "conv1", "conv")},
                     "conv_clamp", "D")
  epilogue = _child(d, "b4", "D")
  mbstd = epilogue.modules.get("mbstd")
  settings = {"img_resolution": resolution, "img_channels": int(_field(d, "img_channels", "D")),
              "architecture": architecture,
              "channel_base": int(d.init_kwargs.get("channel_base", 32768)),
              "channel_max": int(d.init_kwargs.get("channel_max", 512)),
              "mbstd_group_size": _field(mbstd, "group_size", "D.b4.mbstd") if mbstd else 4,
              "mbstd_num_channels": int(_field(mbstd, "num_channels", "D.b4.mbstd"))
                                    if mbstd else 0,
              "c_dim": int(_field(d, "c_dim", "D")),
              "conv_clamp": None if clamp is None else float(clamp)}
  if settings["c_dim"]:
    mapping = _child(d, "mapping", "D")
    m = _mapping_settings(mapping, int(_field(mapping, "w_dim", "D.mapping")), "D.mapping")
    settings.update(cmap_dim=int(_field(epilogue, "cmap_dim", "D.b4")),
                    mapping_layers=m["num_layers"], mapping_lr_multiplier=m["lr_multiplier"])
  return settings


def _gmia_layout(path: str, value: np.ndarray) -> np.ndarray:
  """One NVIDIA tensor in gmia's layout (see the module docstring)."""
  leaf = path.rsplit(".", 1)[-1]
  value = np.asarray(value, np.float32)
  if leaf == "weight" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if path == "b4.fc.weight":
    out = value.shape[0]
    return value.reshape(out, -1, 4, 4).transpose(2, 3, 1, 0).reshape(-1, out)
  if leaf == "weight" and value.ndim == 2:
    return value.T
  if leaf == "const":
    return value.transpose(1, 2, 0)
  return value


def convert_variables(record: TorchModule, module: Any, example_args: tuple,
                      where: str) -> dict:
  """{"params", "buffers"} of `module` (a gmia network) from NVIDIA's `record`.

  example_args: inputs for `module.init`, which give the expected shapes (abstractly). Raises
  ValueError naming the first tensor that is missing, extra or of another shape.
  """
  found = {}
  for path, value in record.named_tensors().items():
    if path.rsplit(".", 1)[-1] == "resample_filter":  # checked by the settings, fixed in gmia
      continue
    collection = "buffers" if path.rsplit(".", 1)[-1] in BUFFERS else "params"
    found[(collection,) + tuple(path.split("."))] = _gmia_layout(path, value)
  rngs = {"params": jax.random.key(0), "noise": jax.random.key(0)}
  expected = traverse_util.flatten_dict(
      jax.eval_shape(lambda: module.init(rngs, *example_args)))
  for key in sorted(set(expected) | set(found)):
    name = f"{where}.{'.'.join(key[1:])}"
    if key not in found:
      raise ValueError(f"{name}: tensor missing from the pickle (expected {expected[key].shape})")
    if key not in expected:
      raise ValueError(f"{name}: tensor of shape {found[key].shape} has no place in gmia's "
                       f"{type(module).__name__}")
    if found[key].shape != expected[key].shape:
      raise ValueError(f"{name}: shape {found[key].shape} in gmia's layout, expected "
                       f"{expected[key].shape}")
  variables = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in found.items()})
  return {"params": variables["params"], "buffers": variables.get("buffers", {})}


def import_generator(g: TorchModule) -> tuple[stylegan.Generator, dict]:
  """(stylegan.Generator, g_vars {"params", "buffers"}) computing NVIDIA's Generator `g`."""
  generator = stylegan.Generator(**generator_settings(g))
  z = jnp.zeros((1, generator.z_dim))
  c = jnp.zeros((1, generator.c_dim)) if generator.c_dim else None
  return generator, convert_variables(g, generator, (z, 1.0, None, "const", c), "G")


def import_discriminator(d: TorchModule) -> tuple[stylegan.Discriminator, dict]:
  """(stylegan.Discriminator, d_vars {"params", "buffers"}) computing NVIDIA's record `d`."""
  discriminator = stylegan.Discriminator(**discriminator_settings(d))
  img = jnp.zeros((1, discriminator.img_resolution, discriminator.img_resolution,
                   discriminator.img_channels))
  c = jnp.zeros((1, discriminator.c_dim)) if discriminator.c_dim else None
  return discriminator, convert_variables(d, discriminator, (img, c), "D")


def fix_class(generator: stylegan.Generator, g_vars: dict,
              class_idx: int) -> tuple[stylegan.Generator, dict]:
  """The unconditional generator equal to a conditional one given class `class_idx` (one-hot c).

  The label's normalised embedding is a constant input of mapping/fc0, so its contribution folds
  into fc0's bias and fc0 keeps only its z rows, rescaled for the smaller fan-in. Every consumer
  of unconditional generators (sampling, projection, the attacks) then serves that class.
  """
  if not generator.c_dim:
    raise ValueError("fix_class needs a conditional generator (c_dim > 0)")
  if not 0 <= class_idx < generator.c_dim:
    raise ValueError(f"class_idx {class_idx} out of range for c_dim {generator.c_dim}")
  mapping = g_vars["params"]["mapping"]
  embed = stylegan_ops.Dense(generator.embed_features or generator.w_dim)
  c = jax.nn.one_hot(jnp.asarray([class_idx]), generator.c_dim)
  y = stylegan.normalize_2nd_moment(embed.apply({"params": mapping["embed"]}, c))[0]
  weight, bias = mapping["fc0"]["weight"], mapping["fc0"]["bias"]
  fan_in, z_dim = weight.shape[0], generator.z_dim
  # fc0(x) = (x @ weight / sqrt(fan_in) + bias) * lr_multiplier, with x = [z part, y].
  fc0 = {"weight": weight[:z_dim] * np.sqrt(z_dim / fan_in),
         "bias": bias + (y @ weight[z_dim:]) / np.sqrt(fan_in)}
  params = dict(g_vars["params"], mapping={
      **{k: v for k, v in mapping.items() if k != "embed"}, "fc0": fc0})
  return generator.clone(c_dim=0, embed_features=None), dict(g_vars, params=params)


def _plain(value: Any) -> Any:
  """JSON-like copy of pickled settings: dicts, lists, numbers, strings, None."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _network(path: str, name: str) -> tuple[TorchModule, dict]:
  data = nvidia_pickle.read_pickle(path)
  if not isinstance(data, dict) or name not in data:
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise ValueError(f"{path}: no network {name!r} (found {keys}); expected a stylegan2-ada-"
                     "pytorch snapshot with G, D and G_ema")
  if not isinstance(data[name], TorchModule):
    raise ValueError(f"{path}: its {name!r} entry is a {type(data[name]).__name__}, not a "
                     "network of stylegan2-ada-pytorch")
  return data[name], data


def _info(path: str, name: str, model: Any, settings: dict, record: TorchModule,
          data: dict, **extra: Any) -> ml_collections.ConfigDict:
  """What load_* returns beside the network; `model` lists the returned module's settings."""
  return ml_collections.ConfigDict({
      "generator": f"stylegan2_pkl:{path}", "network": name, **extra,
      "data": {"resolution": settings["img_resolution"]},
      "model": {k: getattr(model, k) for k in settings},
      "nvidia_init_kwargs": _plain(record.init_kwargs),
      "training_set_kwargs": _plain(data.get("training_set_kwargs") or {})})


def load_generator(path: str, use_ema: bool = True, class_idx: int | None = None
                   ) -> tuple[stylegan.Generator, dict, ml_collections.ConfigDict]:
  """(generator, g_vars {"params", "buffers"}, info) from an NVIDIA stylegan2-ada-pytorch pickle:
  `G_ema` (or `G` with use_ema=False), the model and variables gmia.runs.load_run(workdir, "gan")
  gives of a gmia-trained one.

  class_idx: for a conditional pickle, the unconditional generator of that class (fix_class);
  without it a conditional generator needs c in `map` and `__call__`. info: the pickle's source
  and network, `data.resolution`, `model` (the Generator's settings), NVIDIA's construction
  arguments and training-set settings.
  """
  name = "G_ema" if use_ema else "G"
  record, data = _network(path, name)
  try:
    generator, g_vars = import_generator(record)
    if class_idx is not None:
      generator, g_vars = fix_class(generator, g_vars, class_idx)
  except ValueError as e:
    raise ValueError(f"{path}: {name}: {e}") from None
  return generator, g_vars, _info(path, name, generator, generator_settings(record), record, data,
                                 class_idx=class_idx)


def load_discriminator(path: str) -> tuple[stylegan.Discriminator, dict,
                                           ml_collections.ConfigDict]:
  """(discriminator, d_vars {"params", "buffers"}, info) from the pickle's `D`."""
  record, data = _network(path, "D")
  try:
    discriminator, d_vars = import_discriminator(record)
  except ValueError as e:
    raise ValueError(f"{path}: D: {e}") from None
  return discriminator, d_vars, _info(path, "D", discriminator, discriminator_settings(record),
                                      record, data)
