"""Faces in photos and samples: YuNet detection (through gmia.onnx) and 5-point alignment."""
