"""Identity distance kernels: streamed top-k and per-identity matches, on one device or a mesh."""

from gmia.kernels.checks import METRICS, Metric
from gmia.kernels.search import (best_match_per_identity, count_above, top_k, top_k_identities,
                                 top_k_per_identity)
from gmia.kernels.sharded import REFS_AXIS, make_search_mesh
from gmia.kernels.similarity import DEFAULT_CHUNK_SIZE, stream_queries

__all__ = [
    "DEFAULT_CHUNK_SIZE", "METRICS", "Metric", "REFS_AXIS", "best_match_per_identity",
    "count_above", "make_search_mesh", "stream_queries", "top_k", "top_k_identities",
    "top_k_per_identity",
]
