"""Face alignment in JAX: 5 points to the ArcFace template (insightface's norm_crop), or a crop.

A similarity transform (scale, rotation, translation) is fitted by least squares from a face's
five landmarks (eyes, nose tip, mouth corners; (x, y) in pixels, pixel centres at integers) to the
arcface template (Umeyama 1991), and the photo is warped with bilinear sampling, zeros outside.
Everything is a pure function of arrays, so it jits and vmaps over faces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Landmarks of the 112x112 arcface crop: left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def umeyama(src: jax.Array, dst: jax.Array) -> jax.Array:
  """Least-squares similarity transform f32[2, 3] mapping points src -> dst.

  src, dst: f32[N, 2] (N >= 2, not all coincident). Returns [[sR | t]] so that
  dst ~= src @ (sR).T + t, with a proper rotation (reflections are excluded).
  """
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  cov = dst_c.T @ src_c / src.shape[0]
  u, sigma, vt = jnp.linalg.svd(cov)
  # Flip the weakest direction when the best orthogonal fit would be a reflection.
  d = jnp.array([1.0, jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))])
  d = jnp.where(d == 0, 1.0, d)
  rotation = (u * d) @ vt
  scale = jnp.sum(sigma * d) / jnp.mean(jnp.sum(src_c**2, -1))
  translation = dst_mean - scale * rotation @ src_mean
  return jnp.concatenate([scale * rotation, translation[:, None]], axis=1)


def warp_affine(image: jax.Array, transform: jax.Array, size: int) -> jax.Array:
  """Samples out[v, u] = image at transform^-1 (u, v), bilinear, zero outside.

  image: [H, W, C] (any real dtype); transform: f32[2, 3] from image to output pixel coordinates.
  Returns f32[size, size, C]. Same convention as cv2.warpAffine(image, transform, (size, size)).
  """
  linear, offset = transform[:, :2], transform[:, 2]
  v, u = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32),
                      indexing="ij")
  out_xy = jnp.stack([u.ravel(), v.ravel()], -1)
  src_xy = (out_xy - offset) @ jnp.linalg.inv(linear).T
  coords = [src_xy[:, 1], src_xy[:, 0]]  # (row, column)
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, coords, order=1,
                                                             mode="constant", cval=0.0)
  channels = jax.vmap(sample, in_axes=-1, out_axes=-1)(image.astype(jnp.float32))
  return channels.reshape(size, size, image.shape[-1])


def align_face(image: jax.Array, landmarks: jax.Array, size: int = 112,
               template: np.ndarray | None = None) -> jax.Array:
  """One photo [H, W, 3] with landmarks f32[5, 2] -> aligned crop f32[size, size, 3].

  template: f32[5, 2], where the landmarks go in the crop's pixels; default the arcface template
  scaled by size / 112 (insightface's convention for square crops). Pixel values keep their range
  (uint8 photos give floats in [0, 255]); vmap for batches.
  """
  if landmarks.shape != (5, 2):
    raise ValueError(f"landmarks must be [5, 2] (x, y) points, got {landmarks.shape}")
  if image.ndim != 3:
    raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
  if template is None:
    template = ARCFACE_TEMPLATE * (size / 112.0)
  if np.shape(template) != (5, 2):
    raise ValueError(f"template must be [5, 2] (x, y) points, got {np.shape(template)}")
  transform = umeyama(landmarks, template)
  return warp_affine(image, transform, size)


def crop_fixed(images: jax.Array, box: tuple[float, float, float, float], size: int = 112
               ) -> jax.Array:
  """The same crop of every image, resized: alignment for generators whose faces are aligned.

  images: [B, H, W, C]; box: (top, left, bottom, right) as fractions of the height and width.
  Returns f32[B, size, size, C], antialiased bilinear, values keeping their range.
  """
  top, left, bottom, right = box
  if not 0 <= top < bottom <= 1 or not 0 <= left < right <= 1:
    raise ValueError(f"box must be (top, left, bottom, right) fractions with top < bottom and "
                     f"left < right, got {box}")
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  _, height, width, channels = images.shape
  rows = slice(int(round(top * height)), max(int(round(bottom * height)), 1))
  cols = slice(int(round(left * width)), max(int(round(right * width)), 1))
  crop = jnp.asarray(images, jnp.float32)[:, rows, cols]
  return jax.image.resize(crop, (crop.shape[0], size, size, channels), "linear")
