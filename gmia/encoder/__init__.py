"""Identity encoder: preprocessing and embedding, alignment, ArcFace training and evaluation."""
