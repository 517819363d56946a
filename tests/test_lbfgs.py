"""Batched L-BFGS against scipy's L-BFGS-B (minimisers and evaluations on quadratics and
Rosenbrock), problems of a batch stopping on their own, and stepping.run_until_done against one
batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from gmia.inversion import lbfgs, stepping


def rosenbrock(x):
  return jnp.sum(100.0 * jnp.square(x[1:] - jnp.square(x[:-1])) + jnp.square(1.0 - x[:-1]))


def quadratic(x, a, minimiser):
  # Centred on its minimiser, so that float32 resolves the loss and gradient near it.
  return 0.5 * jnp.dot(x - minimiser, a @ (x - minimiser))


def quadratics(num: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(a f32[num, n, n] symmetric positive definite with condition numbers 10 to 1000,
  minimiser f32[num, n])."""
  rng = np.random.default_rng(seed)
  a, minimiser = [], []
  for condition in np.geomspace(10, 1000, num):
    basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a.append(basis @ np.diag(np.geomspace(1, condition, n)) @ basis.T)
    minimiser.append(rng.normal(size=n))
  return np.asarray(a, np.float32), np.asarray(minimiser, np.float32)


def make_advance(fun, options):
  """Jitted `advance(state) -> (state, done bool[B])`, one evaluation of every problem per call;
  fun(x, *data) takes the problem's own data from the state pytree {"opt", "data"}."""
  def one(carry):
    state = carry["opt"]
    value, grad = jax.value_and_grad(fun)(lbfgs.trial(state), *carry["data"])
    state = lbfgs.update(state, value, grad, options)
    return dict(carry, opt=state), lbfgs.done(state)
  return jax.jit(jax.vmap(one))


def start(x0s, data, options):
  return {"opt": jax.vmap(lambda x: lbfgs.init(x, options))(jnp.asarray(x0s)), "data": data}


def minimize(fun, x0s, data, options, **kwargs):
  carry = stepping.run_until_done(make_advance(fun, options), start(x0s, data, options),
                                  options.max_evaluations, **kwargs)
  return carry["opt"]


def scipy_lbfgsb(fun, x0, data, options):
  """scipy's L-BFGS-B on the same function and gradient (float32 evaluations), unbounded, its
  own stopping rule set to the gradient's alone."""
  value_and_grad = jax.jit(jax.value_and_grad(fun))

  def f(x):
    value, grad = value_and_grad(jnp.asarray(x, jnp.float32), *data)
    return float(value), np.asarray(grad, np.float64)

  return scipy.optimize.minimize(f, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B",
                                 options={"maxcor": options.memory, "gtol": options.gtol,
                                          "ftol": 0.0, "maxfun": options.max_evaluations})


def test_quadratics_reach_the_minimiser_like_scipy():
  """Each problem of the batch is its own quadratic (condition 10 to 1000): every one reaches
  its minimiser and stops on its gradient, in about as many evaluations as L-BFGS-B (measured:
  the same but one, 96 against 86)."""
  a, minimiser = quadratics(6, 12, seed=0)
  options = lbfgs.Options(max_evaluations=300, memory=8, ftol=0.0, gtol=1e-4)
  x0s = np.zeros_like(minimiser)
  state = minimize(quadratic, x0s, (jnp.asarray(a), jnp.asarray(minimiser)), options)
  assert np.all(np.asarray(state.status) == lbfgs.GRADIENT_BELOW_GTOL), state.status
  for i in range(len(a)):
    np.testing.assert_allclose(state.x[i], minimiser[i], atol=1e-3)
    peer = scipy_lbfgsb(quadratic, x0s[i], (a[i], minimiser[i]), options)
    assert int(state.evaluations[i]) <= 1.25 * peer.nfev + 5, (state.evaluations[i], peer.nfev)
  # The harder problems need more evaluations: each stopped on its own.
  assert len(set(np.asarray(state.evaluations).tolist())) > 1, state.evaluations


@pytest.mark.parametrize("n", [2, 5])
def test_rosenbrock_from_several_starts_like_scipy(n):
  """Rosenbrock's valley from 4 random starts in one batch: the minimiser (1, ..., 1) to 1e-3,
  in at most 1.25x L-BFGS-B's evaluations (+5); the loss at x never rises."""
  x0s = np.random.default_rng(n).uniform(-1.5, 1.5, (4, n)).astype(np.float32)
  options = lbfgs.Options(max_evaluations=400, memory=10, ftol=0.0, gtol=1e-4)
  state = minimize(rosenbrock, x0s, (), options)
  np.testing.assert_allclose(state.x, np.ones_like(x0s), atol=1e-3)
  for i in range(len(x0s)):
    peer = scipy_lbfgsb(rosenbrock, x0s[i], (), options)
    np.testing.assert_allclose(peer.x, np.ones(n), atol=1e-3)
    assert int(state.evaluations[i]) <= 1.25 * peer.nfev + 5, (state.evaluations[i], peer.nfev)
  history = np.asarray(state.history)
  assert np.all(np.diff(history, axis=1) <= 0), history


@pytest.mark.parametrize("options, status", [
    (lbfgs.Options(max_evaluations=300, ftol=1e-3, window=3, gtol=0.0), lbfgs.DECREASE_BELOW_FTOL),
    (lbfgs.Options(max_evaluations=7, ftol=0.0, gtol=0.0), lbfgs.BUDGET_SPENT)])
def test_ftol_window_and_budget_stop_a_problem_which_then_stays(options, status):
  """A problem stops on the window's decrease (ftol) or on its budget, keeps its loss in the
  rest of its history, and later updates change nothing."""
  a, minimiser = quadratics(2, 12, seed=1)
  data = (jnp.asarray(a), jnp.asarray(minimiser))
  # A floor of 1 under the loss, so that ftol's relative decrease can stop it.
  above_one = lambda x, a, minimiser: quadratic(x, a, minimiser) + 1.0
  advance = make_advance(above_one, options)
  carry = start(np.zeros_like(minimiser), data, options)
  for _ in range(options.max_evaluations):
    carry, done = advance(carry)
    if np.all(done):
      break
  state = carry["opt"]
  assert np.all(np.asarray(state.status) == status), state.status
  used = np.asarray(state.evaluations)
  assert np.all(used <= options.max_evaluations)
  history = np.asarray(state.history)
  np.testing.assert_allclose(history[np.arange(2), used - 1], jax.vmap(above_one)(state.x, *data),
                             rtol=1e-6)
  for i in range(2):
    assert np.all(history[i, used[i] - 1:] == history[i, used[i] - 1])
  again, _ = advance(carry)
  for before, after in zip(jax.tree.leaves(carry), jax.tree.leaves(again)):
    np.testing.assert_array_equal(before, after)


def test_run_until_done_equals_one_batch_in_order():
  """Seven problems of different difficulty, at most 3 at a time: the same states as all seven
  in one batch, each in its place, and the batch shrinks once none wait."""
  a, minimiser = quadratics(7, 10, seed=2)
  order = np.random.default_rng(0).permutation(7)  # Mixed difficulty along the batch.
  data = (jnp.asarray(a[order]), jnp.asarray(minimiser[order]))
  options = lbfgs.Options(max_evaluations=200, memory=5, ftol=0.0, gtol=1e-3)
  advance = make_advance(quadratic, options)
  sizes = []

  def counted(carry):
    sizes.append(carry["opt"].x.shape[0])
    return advance(carry)

  x0s = np.ones_like(minimiser)
  one_batch = stepping.run_until_done(advance, start(x0s, data, options), options.max_evaluations)
  few = stepping.run_until_done(counted, start(x0s, data, options), options.max_evaluations,
                                max_batch=3, check_every=2)
  assert len(set(np.asarray(one_batch["opt"].evaluations).tolist())) > 2
  assert np.all(np.asarray(few["opt"].status) == lbfgs.GRADIENT_BELOW_GTOL)
  for expected, got in zip(jax.tree.leaves(one_batch), jax.tree.leaves(few)):
    np.testing.assert_array_equal(expected, got)
  assert max(sizes) == 3 and min(sizes) < 3, sorted(set(sizes))


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="memory"):
    lbfgs.Options(max_evaluations=10, memory=0)
  with pytest.raises(ValueError, match="max_evaluations"):
    lbfgs.Options(max_evaluations=0)
  with pytest.raises(ValueError, match="c1 < c2"):
    lbfgs.Options(max_evaluations=10, c1=0.9, c2=0.5)
  with pytest.raises(ValueError, match="ftol"):
    lbfgs.Options(max_evaluations=10, ftol=-1.0)
