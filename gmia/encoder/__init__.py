"""Identity encoder: preprocessing and embedding, face alignment, ArcFace training and evaluation."""
