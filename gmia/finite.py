"""Non-finite values (NaN, inf) in pytrees: a traceable all-finite test and a check that names
the first offending leaf.

A diverged training run or a broken import produces NaN or inf parameters that every later
computation turns into plausible-looking noise; the training loop stops at the first step that
produces one, and loaders refuse a model holding one (`check_finite`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(ValueError):
  """A tree (a state, a model's parameters, a step's metrics) holds NaN or inf."""


def _inexact(tree: Any) -> list[tuple[Any, jax.Array]]:
  return [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]


def all_finite(tree: Any) -> jax.Array:
  """bool[]: every floating-point value of `tree` is finite (integer leaves always are).
  Traceable: one fused reduction per leaf inside the caller's program."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for _, leaf in _inexact(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@jax.jit
def _nonfinite_counts(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.sum(~jnp.isfinite(leaf)) for leaf in leaves])


def nonfinite_leaves(tree: Any) -> dict[str, int]:
  """{leaf path: number of NaN or inf values} of the leaves that hold any, in tree order."""
  inexact = _inexact(tree)
  if not inexact:
    return {}
  counts = np.asarray(_nonfinite_counts([leaf for _, leaf in inexact]))
  return {jax.tree_util.keystr(path): int(count)
          for (path, _), count in zip(inexact, counts) if count}


def check_finite(tree: Any, what: str) -> None:
  """Raises NonFiniteError naming `what` and its first leaf holding NaN or inf."""
  bad = nonfinite_leaves(tree)
  if bad:
    path, count = next(iter(bad.items()))
    raise NonFiniteError(f"{what} holds non-finite values (NaN or inf): {count} in {path}"
                         + (f" and {len(bad) - 1} more leaves" if len(bad) > 1 else ""))
