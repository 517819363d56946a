"""The attacks as pure functions from embeddings and models to scores."""
