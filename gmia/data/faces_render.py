"""Procedural faces: identity traits, photo nuisance, and a vectorised renderer.

An identity is a fixed vector of facial traits (head shape, skin tone, hair colour and style,
eye spacing/size/colour, brows, nose, mouth, ears, facial hair, a mole, glasses). A photo of it
draws nuisance factors (pose, expression, lighting, background, clothing, blur, sensor noise).
The renderer is a jit-compiled, vmapped composition of soft-edged shapes evaluated on the pixel
grid, so every photo of every identity is rendered in one batched call.

Traits and nuisance are drawn with numpy's seeded Generator: the same seed gives the same bytes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, np.ndarray]

_SKIN_LIGHT = np.array([0.96, 0.80, 0.69], np.float32)
_SKIN_DARK = np.array([0.33, 0.20, 0.13], np.float32)
_HAIR_PALETTE = np.array([
    [0.06, 0.05, 0.05], [0.20, 0.12, 0.07], [0.38, 0.24, 0.13], [0.55, 0.25, 0.10],
    [0.85, 0.70, 0.42], [0.62, 0.60, 0.58], [0.72, 0.35, 0.15], [0.92, 0.88, 0.80]], np.float32)
_IRIS_PALETTE = np.array([
    [0.30, 0.17, 0.07], [0.12, 0.07, 0.04], [0.25, 0.45, 0.75], [0.30, 0.55, 0.35],
    [0.50, 0.55, 0.58], [0.50, 0.38, 0.18]], np.float32)


def _uniform(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
  return rng.uniform(low, high, n).astype(np.float32)


def _palette(rng: np.random.Generator, n: int, palette: np.ndarray, jitter: float) -> np.ndarray:
  colours = palette[rng.integers(0, len(palette), n)]
  return np.clip(colours + rng.normal(0, jitter, colours.shape), 0, 1).astype(np.float32)


def sample_identities(rng: np.random.Generator, n: int) -> Params:
  """Traits of `n` identities: a dict of f32[n] (or f32[n, 3] for colours)."""
  u = functools.partial(_uniform, rng, n)
  tone = u(0.0, 1.0)[:, None]
  skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK
  skin = np.clip(skin + rng.normal(0, 0.025, (n, 3)), 0, 1).astype(np.float32)
  hair = _palette(rng, n, _HAIR_PALETTE, 0.05)
  lips = np.clip(skin * 0.75 + np.array([0.25, 0.02, 0.04]) * u(0.5, 1.2)[:, None], 0, 1)
  return {
      "head_w": u(0.46, 0.62), "head_h": u(0.60, 0.78), "jaw": u(1.5, 3.2),
      "skin": skin, "hair": hair, "lips": lips.astype(np.float32),
      "hairline": u(-0.68, -0.36), "hair_volume": u(0.0, 0.14), "hair_length": u(0.0, 1.0),
      "parting": u(-0.35, 0.35), "fringe": u(0.0, 0.16),
      "eye_spacing": u(0.16, 0.27), "eye_y": u(-0.16, 0.0), "eye_w": u(0.065, 0.11),
      "eye_h": u(0.35, 0.7), "iris": _palette(rng, n, _IRIS_PALETTE, 0.04), "iris_r": u(0.5, 0.8),
      "brow_t": u(0.012, 0.045), "brow_tilt": u(-0.35, 0.35), "brow_gap": u(0.06, 0.12),
      "brow_len": u(0.07, 0.13),
      "nose_len": u(0.12, 0.26), "nose_w": u(0.04, 0.09),
      "mouth_y": u(0.24, 0.40), "mouth_w": u(0.10, 0.22), "lip_t": u(0.015, 0.045),
      "ear_size": u(0.05, 0.11), "ear_y": u(-0.10, 0.10),
      "beard": (rng.random(n) < 0.25).astype(np.float32) * u(0.4, 1.0),
      "moustache": (rng.random(n) < 0.25).astype(np.float32) * u(0.5, 1.0),
      "mole": (rng.random(n) < 0.5).astype(np.float32), "mole_x": u(-0.35, 0.35),
      "mole_y": u(-0.1, 0.4), "mole_r": u(0.012, 0.028),
      "glasses": (rng.random(n) < 0.15).astype(np.float32),
  }


def sample_nuisance(rng: np.random.Generator, n: int) -> Params:
  """Nuisance of `n` photos: pose, expression, lighting, background, clothing, blur, noise."""
  u = functools.partial(_uniform, rng, n)
  blink = rng.random(n) < 0.08
  return {
      "angle": rng.normal(0, 0.12, n).clip(-0.3, 0.3).astype(np.float32),
      "scale": u(0.86, 1.12), "shift_x": u(-0.09, 0.09), "shift_y": u(-0.08, 0.08),
      "yaw": u(-0.35, 0.35),
      "smile": u(-0.4, 1.0), "mouth_open": (u(0, 1) ** 3),
      "eye_open": np.where(blink, 0.15, u(0.75, 1.1)).astype(np.float32),
      "brow_raise": u(-0.015, 0.03), "gaze_x": u(-0.25, 0.25),
      "light_angle": u(0, 2 * np.pi), "light_strength": u(0.1, 0.45),
      "light_tint": np.clip(1 + rng.normal(0, 0.06, (n, 3)), 0.8, 1.2).astype(np.float32),
      "exposure": u(0.78, 1.15),
      "bg_a": u(0, 1)[:, None] * rng.random((n, 3)).astype(np.float32),
      "bg_b": rng.random((n, 3)).astype(np.float32), "bg_angle": u(0, 2 * np.pi),
      "clothes": rng.random((n, 3)).astype(np.float32),
      "blur": u(0, 1) ** 2, "noise": u(0.0, 0.04),
      "noise_seed": rng.integers(0, 2**31 - 1, n).astype(np.uint32),
  }


def _soft(sdf: jax.Array, edge: jax.Array) -> jax.Array:
  """Coverage of a shape given its signed distance (negative inside), anti-aliased over `edge`."""
  return jax.nn.sigmoid(-sdf / edge)


def _ellipse(x, y, cx, cy, rx, ry):
  """Approximate signed distance to an axis-aligned ellipse (exact for circles)."""
  r = jnp.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + 1e-12)
  return (r - 1.0) * jnp.minimum(rx, ry)


def _over(canvas, colour, alpha):
  """Paints `colour` over `canvas` with per-pixel coverage `alpha`."""
  return canvas * (1 - alpha[..., None]) + colour * alpha[..., None]


def _render_one(t: dict, p: dict, resolution: int) -> jax.Array:
  """One photo, f32[H, W, 3] in [0, 1], from its identity traits `t` and nuisance `p`."""
  axis = (jnp.arange(resolution) + 0.5) / resolution * 2 - 1
  py, px = jnp.meshgrid(axis, axis, indexing="ij")
  # Pose: image coordinates -> face coordinates (rotation, scale, shift).
  cos, sin = jnp.cos(p["angle"]), jnp.sin(p["angle"])
  dx, dy = px - p["shift_x"], py - p["shift_y"]
  x = (cos * dx + sin * dy) / p["scale"]
  y = (-sin * dx + cos * dy) / p["scale"]
  edge = 1.6 / resolution / p["scale"]
  yaw = p["yaw"]
  head_w = t["head_w"] * (1 - 0.12 * jnp.abs(yaw))
  fx = x - 0.12 * yaw  # Inner features slide towards the side the head turns to.

  # Background: a linear gradient between two colours.
  g = 0.5 + 0.5 * (jnp.cos(p["bg_angle"]) * px + jnp.sin(p["bg_angle"]) * py)
  img = p["bg_a"] * (1 - g[..., None]) + p["bg_b"] * g[..., None]

  # Long hair behind the head, shoulders and neck.
  length = t["hair_length"]
  hair_back = _ellipse(x, y, 0, -0.06 + 0.32 * length, head_w + t["hair_volume"],
                       t["head_h"] + t["hair_volume"] + 0.32 * length)
  img = _over(img, t["hair"], _soft(hair_back, edge) * (length > 0.35))
  img = _over(img, p["clothes"], _soft(_ellipse(x, y, 0, 1.35, 0.95, 0.5), edge))
  neck = jnp.maximum(jnp.abs(x) - 0.6 * head_w, -(y - 0.3))
  img = _over(img, t["skin"] * 0.82, _soft(neck, edge))

  # Ears, then the head (super-ellipse, sharper jaw below the midline).
  for side in (-1.0, 1.0):
    ear = _ellipse(x, y, side * head_w * (1 - 0.04 * side * yaw), t["ear_y"],
                   t["ear_size"] * 0.55, t["ear_size"])
    img = _over(img, t["skin"] * 0.9, _soft(ear, edge))
  power = jnp.where(y > 0, t["jaw"], 2.0)
  radius = (jnp.abs(x / head_w) ** power + jnp.abs(y / t["head_h"]) ** power + 1e-12) ** (1 / power)
  head_sdf = (radius - 1) * jnp.minimum(head_w, t["head_h"])
  head = _soft(head_sdf, edge)
  # Directional light on a pseudo-sphere.
  nz = jnp.sqrt(jnp.clip(1 - radius**2, 0.0, 1.0))
  nx, ny = x / head_w, y / t["head_h"]
  light = (jnp.cos(p["light_angle"]) * nx + jnp.sin(p["light_angle"]) * ny) * 0.7 + 0.3 * nz
  shade = 1 + p["light_strength"] * (light - 0.3)
  img = _over(img, t["skin"] * shade[..., None], head)

  # Hair on top of the head: above a hairline with a parting and an optional fringe.
  hairline = t["hairline"] + 0.12 * jnp.abs(fx - t["parting"]) ** 1.5 + t["fringe"] * (
      1 - jnp.abs(fx - t["parting"]))
  on_scalp = _soft(y - hairline, edge) * _soft(head_sdf - t["hair_volume"], edge)
  img = _over(img, t["hair"] * (0.85 + 0.3 * (shade[..., None] - 1)), on_scalp)

  # Beard and moustache.
  below_mouth = _soft(t["mouth_y"] - 0.06 - y, edge)
  img = _over(img, t["hair"], below_mouth * head * t["beard"] * 0.9)
  moustache = _ellipse(fx, y, 0, t["mouth_y"] - 0.05, t["mouth_w"] * 0.7, 0.025)
  img = _over(img, t["hair"], _soft(moustache, edge) * t["moustache"])

  # Eyes: whites, iris (with gaze), pupil; eyelids close with `eye_open`.
  eye_h = t["eye_w"] * t["eye_h"] * p["eye_open"]
  for side in (-1.0, 1.0):
    white = _soft(_ellipse(fx, y, side * t["eye_spacing"], t["eye_y"], t["eye_w"], eye_h), edge)
    img = _over(img, jnp.array([0.95, 0.95, 0.93]), white)
    iris_x = side * t["eye_spacing"] + p["gaze_x"] * t["eye_w"] * 0.5
    iris_r = t["eye_w"] * t["eye_h"] * t["iris_r"]
    iris = _soft(_ellipse(fx, y, iris_x, t["eye_y"], iris_r, iris_r), edge) * white
    img = _over(img, t["iris"], iris)
    pupil = _soft(_ellipse(fx, y, iris_x, t["eye_y"], iris_r * 0.45, iris_r * 0.45), edge) * white
    img = _over(img, jnp.zeros(3), pupil)
    # Brows, tilted outward-up or outward-down per identity, raised by expression.
    bx, by = fx - side * t["eye_spacing"], y - (t["eye_y"] - t["brow_gap"] - p["brow_raise"])
    ct, st = jnp.cos(side * t["brow_tilt"]), jnp.sin(side * t["brow_tilt"])
    brow = _ellipse(ct * bx + st * by, -st * bx + ct * by, 0, 0, t["brow_len"], t["brow_t"])
    img = _over(img, t["hair"] * 0.8, _soft(brow, edge))
    # Glasses: a ring around each eye.
    ring = jnp.abs(_ellipse(fx, y, side * t["eye_spacing"], t["eye_y"], t["eye_w"] * 1.5,
                            t["eye_w"] * 1.2)) - 0.012
    img = _over(img, jnp.array([0.1, 0.1, 0.12]), _soft(ring, edge) * t["glasses"])

  # Nose: a shaded ridge and two nostrils.
  nose_top = t["eye_y"] + 0.02
  nose = _ellipse(fx, y, 0.03 * yaw, nose_top + t["nose_len"] * 0.5, t["nose_w"] * 0.6,
                  t["nose_len"] * 0.5)
  img = _over(img, t["skin"] * 0.8, _soft(nose, edge) * 0.55)
  for side in (-1.0, 1.0):
    nostril = _ellipse(fx, y, side * t["nose_w"] * 0.45, nose_top + t["nose_len"],
                       t["nose_w"] * 0.25, 0.012)
    img = _over(img, t["skin"] * 0.35, _soft(nostril, edge))

  # Mouth: lips along a curve bent by the smile, dark opening with `mouth_open`.
  u = fx / t["mouth_w"]
  curve = t["mouth_y"] - p["smile"] * 0.06 * (u**2 - 0.3)
  width_profile = jnp.clip(1 - u**2, 0.0, 1.0)
  opening = p["mouth_open"] * 0.035
  beyond_corners = (jnp.abs(u) - 1) * t["mouth_w"]
  lips = jnp.maximum(jnp.abs(y - curve) - (t["lip_t"] + opening) * width_profile, beyond_corners)
  img = _over(img, t["lips"], _soft(lips, edge))
  inside = jnp.maximum(jnp.abs(y - curve) - opening * width_profile, beyond_corners)
  img = _over(img, jnp.array([0.25, 0.05, 0.07]), _soft(inside, edge) * (opening > 0.004))

  # Mole.
  mole = _ellipse(fx, y, t["mole_x"] * head_w, t["mole_y"] * t["head_h"], t["mole_r"], t["mole_r"])
  img = _over(img, t["skin"] * 0.3, _soft(mole, edge) * t["mole"] * head)

  # Camera: light colour, exposure, optics blur, sensor noise.
  img = img * p["light_tint"] * p["exposure"]
  img = _blur(img, p["blur"])
  noise = jax.random.normal(jax.random.PRNGKey(p["noise_seed"]), img.shape) * p["noise"]
  return jnp.clip(img + noise, 0.0, 1.0)


def _blur(img: jax.Array, amount: jax.Array) -> jax.Array:
  """Blends the image with a separable [1, 4, 6, 4, 1] blur of itself by `amount` in [0, 1]."""
  kernel = jnp.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
  padded = jnp.pad(img, ((2, 2), (2, 2), (0, 0)), mode="edge")
  h, w, _ = img.shape
  rows = sum(kernel[i] * padded[i:i + h] for i in range(5))
  blurred = sum(kernel[i] * rows[:, i:i + w] for i in range(5))
  return img * (1 - amount) + blurred * amount


@functools.partial(jax.jit, static_argnames="resolution")
def _render_batch(traits: dict, nuisance: dict, resolution: int) -> jax.Array:
  images = jax.vmap(_render_one, in_axes=(0, 0, None))(traits, nuisance, resolution)
  return jnp.round(images * 255).astype(jnp.uint8)


def render(traits: Params, nuisance: Params, resolution: int) -> np.ndarray:
  """Renders photos: traits and nuisance of B photos (dicts of f32[B] / f32[B,3]) -> u8[B,R,R,3]."""
  if resolution < 8:
    raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
  return np.asarray(_render_batch(traits, nuisance, resolution))
