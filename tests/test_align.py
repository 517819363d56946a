"""Umeyama fit and the bilinear warp against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia.faces.align import ARCFACE_TEMPLATE, align_face, crop_fixed, umeyama, warp_affine


def similarity(scale, angle, shift):
  c, s = np.cos(angle), np.sin(angle)
  return np.concatenate([scale * np.array([[c, -s], [s, c]]), np.asarray(shift)[:, None]], 1)


def apply(transform, points):
  return points @ transform[:, :2].T + transform[:, 2]


@pytest.mark.parametrize("scale,angle,shift", [(1.0, 0.0, (0.0, 0.0)), (2.3, 0.4, (15.0, -7.0)),
                                               (0.6, -2.5, (-30.0, 90.0))])
def test_umeyama_recovers_known_similarity(scale, angle, shift):
  truth = similarity(scale, angle, shift)
  landmarks = apply(truth, ARCFACE_TEMPLATE.astype(np.float64))
  np.testing.assert_allclose(umeyama(ARCFACE_TEMPLATE, landmarks), truth, atol=2e-4, rtol=1e-5)
  # The aligner's direction: landmarks -> template is the inverse similarity.
  inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
  np.testing.assert_allclose(umeyama(landmarks, ARCFACE_TEMPLATE), inverse, atol=2e-5, rtol=1e-4)


def test_umeyama_never_returns_a_reflection():
  mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0], np.float32)
  transform = np.asarray(umeyama(mirrored, ARCFACE_TEMPLATE))
  assert np.linalg.det(transform[:, :2]) > 0


def test_warp_of_linear_ramp_is_exact():
  # Bilinear interpolation reproduces a linear image exactly, so the warped ramp is known in
  # closed form wherever the source point lies inside the image.
  h, w = 80, 90
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  coefficients = np.array([[0.5, -0.25, 3.0], [-0.1, 0.8, -4.0], [0.3, 0.3, 1.0]], np.float32)
  image = np.stack([a * x + b * y + c for a, b, c in coefficients], -1)
  transform = similarity(1.3, 0.35, (5.0, -12.0)).astype(np.float32)
  size = 64
  out = np.asarray(warp_affine(jnp.asarray(image), jnp.asarray(transform), size))
  v, u = np.mgrid[0:size, 0:size].astype(np.float64)
  inverse = np.linalg.inv(np.vstack([transform, [0, 0, 1]]).astype(np.float64))[:2]
  src = apply(inverse, np.stack([u.ravel(), v.ravel()], -1)).reshape(size, size, 2)
  expected = np.stack([a * src[..., 0] + b * src[..., 1] + c for a, b, c in coefficients], -1)
  inside = ((src[..., 0] >= 0) & (src[..., 0] <= w - 1) & (src[..., 1] >= 0)
            & (src[..., 1] <= h - 1))
  assert inside.mean() > 0.3
  np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)
  far_outside = (src[..., 0] < -1) | (src[..., 0] > w) | (src[..., 1] < -1) | (src[..., 1] > h)
  assert far_outside.any() and np.all(out[far_outside] == 0)


def test_align_batch_puts_landmarks_on_template():
  # A bright dot at each landmark of a transformed face lands on the template after alignment.
  rng = np.random.default_rng(0)
  size, photo = 112, 160
  transforms = [similarity(s, a, t) for s, a, t in
                [(1.2, 0.3, (20.0, 5.0)), (0.9, -0.2, (30.0, 25.0))]]
  landmarks = np.stack([apply(t, ARCFACE_TEMPLATE) for t in transforms]).astype(np.float32)
  images = rng.uniform(0, 10, (2, photo, photo, 3)).astype(np.float32)
  for i, points in enumerate(landmarks):
    for px, py in np.round(points).astype(int):
      images[i, py - 1:py + 2, px - 1:px + 2] = 255.0
  aligned = jax.jit(jax.vmap(align_face))(
      jnp.asarray(images), jnp.asarray(landmarks))
  assert aligned.shape == (2, size, size, 3)
  for i in range(2):
    for tx, ty in np.round(ARCFACE_TEMPLATE).astype(int):
      assert aligned[i, ty, tx].min() > 150


def test_align_rejects_bad_landmarks():
  with pytest.raises(ValueError, match="landmarks must be"):
    align_face(jnp.zeros((50, 50, 3)), jnp.zeros((4, 2)))


def test_fixed_crop_of_linear_ramp_is_exact_inside():
  # Halving with an antialiased linear resize averages pixel pairs' neighbourhoods with weights
  # symmetric about each output centre, so a linear image gives the ramp's value there wherever
  # the kernel stays inside the crop.
  h, w, size = 120, 100, 30
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  images = np.stack([0.5 * x + 0.25 * y, -0.3 * x + y], -1)[None]
  box = (0.25, 0.2, 0.75, 0.8)  # Rows 30..90, columns 20..80: 60 x 60 px into 30 x 30.
  out = np.asarray(crop_fixed(jnp.asarray(images), box, size))
  assert out.shape == (1, size, size, 2)
  rows = 30 + 2 * np.arange(size) + 0.5
  cols = 20 + 2 * np.arange(size) + 0.5
  cy, cx = np.meshgrid(rows, cols, indexing="ij")
  expected = np.stack([0.5 * cx + 0.25 * cy, -0.3 * cx + cy], -1)
  np.testing.assert_allclose(out[0, 1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-3)
  with pytest.raises(ValueError, match="box must be"):
    crop_fixed(jnp.asarray(images), (0.5, 0.0, 0.4, 1.0))
