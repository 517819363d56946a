"""Face matchers: a preset's preprocessing against onnxruntime fed by hand, gmia's own encoder
against gmia.face_encoder.embed, and the matcher block's errors."""

import jax
import numpy as np
import pytest

from gmia.face_encoder import embed as face_embed
from gmia.faces import matchers
from gmia.runs import load_run
from tests import assets


def test_mobilefacenet_preset_equals_onnxruntime_on_hand_preprocessed_crops():
  path = assets.mobilefacenet_path()
  matcher = matchers.load_matcher(matchers.default_config(path=path, preset="mobilefacenet"))
  assert matcher.input_size == 112
  crops = np.random.default_rng(0).uniform(0, 255, (2, 112, 112, 3)).astype(np.float32)
  session = assets.onnxruntime_session(path)
  name = session.get_inputs()[0].name
  hand = [((c - 127.0) / 128.0).transpose(2, 0, 1)[None] for c in crops]  # RGB, NCHW.
  want = np.concatenate([session.run(None, {name: x})[0] for x in hand])
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  got = np.asarray(jax.jit(matcher.embed)(matcher.params, crops))
  np.testing.assert_allclose(got, want, atol=1e-4)
  # Another preprocessing gives other embeddings: the preset is not ignored.
  bgr = matchers.load_matcher(matchers.default_config(path=path, preset="mobilefacenet",
                                                      bgr=True))
  assert np.abs(np.asarray(bgr.embed(bgr.params, crops)) - got).max() > 1e-2


def test_a_gmia_encoder_as_a_matcher_embeds_like_face_encoder_embed(models):
  _, encoder_workdir = models
  matcher = matchers.load_matcher(matchers.default_config(path=encoder_workdir))
  run = load_run(encoder_workdir, "face_encoder")
  model, variables = run.model, run.variables
  photos = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_allclose(np.asarray(matcher.embed(matcher.params, photos.astype(np.float32))),
                             np.asarray(face_embed.embed(model, variables, photos)), atol=1e-5)
  assert matcher.fingerprint["kind"] == "gmia" and len(matcher.fingerprint["digest"]) == 16


@pytest.mark.parametrize("fields,message", [
    ({}, "config.matcher.path is required"),
    ({"path": "a", "kind": "torch"}, "unknown config.matcher.kind 'torch'"),
    ({"path": __file__, "preset": "deepface"}, "unknown config.matcher.preset 'deepface'"),
    ({"path": "nowhere.onnx"}, "config.matcher.path='nowhere.onnx' does not exist"),
])
def test_bad_matcher_blocks_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    matchers.load_matcher(matchers.default_config(**fields))


def test_a_classifier_workdir_is_no_matcher(models):
  gan_workdir, _ = models
  with pytest.raises(ValueError, match="holds a gan checkpoint, not face_encoder"):
    matchers.load_matcher(matchers.default_config(path=gan_workdir))


def test_a_wrong_input_size_is_named():
  with pytest.raises(ValueError, match="reads 112 px crops, the preprocessing says 96"):
    matchers.load_matcher(matchers.default_config(path=assets.sface_path(), preset="sface",
                                                  input_size=96))
