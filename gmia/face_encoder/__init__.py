"""The face encoder (identity embeddings): preprocessing and embedding, training, evaluation."""
