"""Faces in photos and samples: YuNet detection (through gmia.onnx), 5-point alignment, face
matchers (a gmia face encoder or any ONNX model, named by one `matcher` block) and the embedder
that puts alignment and matcher together."""
