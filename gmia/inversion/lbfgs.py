"""Batched L-BFGS: many independent smooth problems, one loss-and-gradient evaluation per call.

Limited-memory BFGS (Nocedal & Wright, Numerical Optimization, 2nd ed.: algorithm 7.4, the
two-loop recursion over the last `memory` curvature pairs, scaled by s.y / y.y; the first step
and any restart along -g with a step of unit length, as L-BFGS-B takes them) with a line search
for the weak Wolfe conditions (sufficient decrease c1, curvature c2) that brackets the step,
extrapolates up to 4x and interpolates by safeguarded cubics.

The optimiser is a state machine over one problem: `update(state, value, grad)` takes the loss
and gradient at the state's trial point (`trial(state)`) and returns the state whose trial point
is the next one to evaluate, whether it is a line-search trial or the first step of a new
iteration. Vmapped, one jitted call evaluates every problem's trial point once: each problem keeps
its own curvature pairs, step size and line search, and stops on its own (its loss fell by at
most a fraction ftol over the last `window` evaluations, its largest gradient component is below
gtol, a line search found no step that decreases it enough, or its budget is spent), after which
it no longer moves. A line search written as a loop inside jit would make every problem of a
batch wait for the slowest one's trials, and XLA:CPU runs a network's gradient inside a loop
several times slower (gmia.inversion.stepping).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

# State.status: why a problem stopped; RUNNING while it has not.
RUNNING, DECREASE_BELOW_FTOL, GRADIENT_BELOW_GTOL, LINE_SEARCH_FAILED, BUDGET_SPENT = range(5)


@dataclasses.dataclass(frozen=True)
class Options:
  """max_evaluations: loss-and-gradient evaluations per problem (L-BFGS-B's maxfun).
  memory: curvature pairs kept (L-BFGS-B's maxcor).
  ftol, window: stop when the last `window` evaluations lowered the loss by at most ftol * |f|.
    L-BFGS-B's factr tests one iteration's decrease against machine precision instead: where the
    loss falls slowly but steadily one short step can stop it, or a long flat stretch not.
  gtol: stop when every gradient component is at most gtol in magnitude (L-BFGS-B's pgtol).
  c1, c2: the sufficient-decrease and curvature constants of the weak Wolfe conditions.
  max_trials: evaluations one line search may take. Then, or when the budget ends during a
    search, the longest step found to decrease the loss enough is taken; without one a search
    that runs out of trials stops the problem.
  """
  max_evaluations: int
  memory: int = 10
  ftol: float = 1e-4
  window: int = 10
  gtol: float = 1e-5
  c1: float = 1e-4
  c2: float = 0.9
  max_trials: int = 20

  def __post_init__(self):
    if min(self.max_evaluations, self.memory, self.window, self.max_trials) < 1:
      raise ValueError("L-BFGS max_evaluations, memory, window and max_trials must be positive, "
                       f"got {self.max_evaluations}, {self.memory}, {self.window}, "
                       f"{self.max_trials}")
    if not 0 < self.c1 < self.c2 < 1:
      raise ValueError(f"L-BFGS needs 0 < c1 < c2 < 1, got c1={self.c1}, c2={self.c2}")
    if self.ftol < 0 or self.gtol < 0:
      raise ValueError(f"L-BFGS ftol and gtol must be non-negative, got {self.ftol}, {self.gtol}")


class State(NamedTuple):
  """One problem (vmapped: a leading batch axis on every field). n: the problem's dimension.

  x f32[n], value f32[], grad f32[n]: the current iterate, its loss and gradient.
  direction f32[n], slope f32[]: the search direction and grad . direction (< 0).
  step f32[]: the step along direction of the trial point x + step * direction.
  lo, lo_value, lo_slope, lo_grad: the longest step known to decrease the loss enough (0: x),
    its loss, slope and gradient; hi, hi_value, hi_slope: the shortest step known to decrease it
    too little (inf: none yet). The line search's bracket.
  s, y f32[memory, n], rho f32[memory]: curvature pairs, newest last (rho = 1 / s.y; 0: empty).
  trials i32[]: evaluations of the current line search; evaluations i32[]: of the problem.
  status i32[]: RUNNING or why it stopped. history f32[max_evaluations]: the loss at x after each
    evaluation, its last value repeated once the problem stops.
  """
  x: jax.Array
  value: jax.Array
  grad: jax.Array
  direction: jax.Array
  slope: jax.Array
  step: jax.Array
  lo: jax.Array
  lo_value: jax.Array
  lo_slope: jax.Array
  lo_grad: jax.Array
  hi: jax.Array
  hi_value: jax.Array
  hi_slope: jax.Array
  s: jax.Array
  y: jax.Array
  rho: jax.Array
  trials: jax.Array
  evaluations: jax.Array
  status: jax.Array
  history: jax.Array


def init(x0: jax.Array, options: Options) -> State:
  """The state of one problem starting at x0 f32[n]: its first trial point is x0 itself."""
  x0 = jnp.asarray(x0, jnp.float32)
  zero, vector = jnp.float32(0.0), jnp.zeros_like(x0)
  memory = jnp.zeros((options.memory,) + x0.shape, jnp.float32)
  return State(x=x0, value=zero, grad=vector, direction=vector, slope=zero, step=zero, lo=zero,
               lo_value=zero, lo_slope=zero, lo_grad=vector, hi=jnp.float32(jnp.inf),
               hi_value=zero, hi_slope=zero, s=memory, y=memory,
               rho=jnp.zeros((options.memory,), jnp.float32), trials=jnp.int32(0),
               evaluations=jnp.int32(0), status=jnp.int32(RUNNING),
               history=jnp.zeros((options.max_evaluations,), jnp.float32))


def trial(state: State) -> jax.Array:
  """f32[n]: where the loss and gradient are needed next."""
  return state.x + state.step * state.direction


def done(state: State) -> jax.Array:
  """bool[]: the problem has stopped."""
  return state.status != RUNNING


def two_loop(grad: jax.Array, s: jax.Array, y: jax.Array, rho: jax.Array) -> jax.Array:
  """-H grad f32[n]: the L-BFGS direction for curvature pairs s, y f32[m, n] (newest last) and
  rho f32[m] (0 for an empty pair, which then leaves the direction alone)."""
  def newest_first(q, pair):
    s_i, y_i, rho_i = pair
    alpha = rho_i * jnp.dot(s_i, q)
    return q - alpha * y_i, alpha

  def oldest_first(r, pair):
    s_i, y_i, rho_i, alpha = pair
    return r + s_i * (alpha - rho_i * jnp.dot(y_i, r)), None

  # Loops, not unrolled: the 32 px projection's first call (compiling, 20 pairs) took 36 s, not
  # 66 s, and later calls ran as fast.
  q, alphas = jax.lax.scan(newest_first, grad, (s, y, rho), reverse=True)
  yy = jnp.dot(y[-1], y[-1])
  gamma = jnp.where(rho[-1] > 0, 1.0 / jnp.maximum(rho[-1] * yy, 1e-30), 1.0)
  r, _ = jax.lax.scan(oldest_first, gamma * q, (s, y, rho, alphas))
  return -r


def _cubic_minimizer(a, fa, da, b, fb, db):
  """The minimiser of the cubic through (a, fa) and (b, fb) with slopes da and db; NaN when it
  has none."""
  d1 = da + db - 3.0 * (fa - fb) / (a - b)
  d2 = jnp.sign(b - a) * jnp.sqrt(d1 * d1 - da * db)  # NaN when the cubic has no minimiser.
  return b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2)


def _select(condition: jax.Array, new: State, old: State) -> State:
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _new_iteration(state: State, x, value, grad, s, y, rho) -> State:
  """A fresh line search from x along the two-loop direction; along -g with a step of unit
  length when there are no pairs or the direction does not descend."""
  direction = two_loop(grad, s, y, rho)
  slope = jnp.dot(grad, direction)
  restart = (rho[-1] <= 0) | ~(slope < 0)
  g_norm = jnp.sqrt(jnp.dot(grad, grad))
  direction = jnp.where(restart, -grad, direction)
  slope = jnp.where(restart, -g_norm * g_norm, slope)
  rho = jnp.where(restart & (rho[-1] > 0), 0.0, rho)  # A bad direction: forget the pairs.
  step = jnp.where(restart, 1.0 / jnp.maximum(g_norm, 1e-30), 1.0)
  return state._replace(x=x, value=value, grad=grad, direction=direction, slope=slope,
                        step=step, lo=jnp.float32(0.0), lo_value=value, lo_slope=slope,
                        lo_grad=grad, hi=jnp.float32(jnp.inf), s=s, y=y, rho=rho,
                        trials=jnp.int32(0))


def update(state: State, value: jax.Array, grad: jax.Array, options: Options) -> State:
  """The state after the loss value f32[] and gradient grad f32[n] at trial(state) are known.

  A stopped problem is returned unchanged.
  """
  value = jnp.asarray(value, jnp.float32)
  grad = jnp.asarray(grad, jnp.float32)
  evaluations = state.evaluations + 1
  first = state.evaluations == 0
  gtol_met = jnp.max(jnp.abs(grad)) <= options.gtol

  # The first evaluation, at x0.
  started = _new_iteration(state, state.x, value, grad, state.s, state.y, state.rho)
  started = started._replace(status=jnp.where(gtol_met, GRADIENT_BELOW_GTOL, RUNNING))

  # A line-search trial at step alpha. Too little decrease shortens the bracket from above, too
  # steep a slope from below (a step that meets both Wolfe conditions becomes `lo` too).
  alpha, slope = state.step, jnp.dot(grad, state.direction)
  enough_decrease = value <= state.value + options.c1 * alpha * state.slope  # False for NaN.
  wolfe = enough_decrease & (slope >= options.c2 * state.slope)
  lo = jnp.where(enough_decrease, alpha, state.lo)
  lo_value = jnp.where(enough_decrease, value, state.lo_value)
  lo_slope = jnp.where(enough_decrease, slope, state.lo_slope)
  lo_grad = jnp.where(enough_decrease, grad, state.lo_grad)
  hi = jnp.where(enough_decrease, state.hi, alpha)
  hi_value = jnp.where(enough_decrease, state.hi_value, value)
  hi_slope = jnp.where(enough_decrease, state.hi_slope, slope)

  # The step is taken when it meets the Wolfe conditions, or, when the search runs out of trials
  # or the problem out of evaluations, the longest step found to decrease the loss enough.
  trials = state.trials + 1
  out_of_trials = trials >= options.max_trials
  cut_short = out_of_trials | (evaluations >= options.max_evaluations)
  accept = wolfe | (cut_short & (lo > 0))
  new_x = state.x + lo * state.direction
  s_new, y_new = new_x - state.x, lo_grad - state.grad
  sy = jnp.dot(s_new, y_new)
  keep_pair = sy > 1e-10 * jnp.dot(y_new, y_new)  # Wolfe's curvature gives s.y > 0 but rounding.
  s_mem = jnp.where(keep_pair, jnp.concatenate([state.s[1:], s_new[None]]), state.s)
  y_mem = jnp.where(keep_pair, jnp.concatenate([state.y[1:], y_new[None]]), state.y)
  rho_mem = jnp.where(keep_pair, jnp.concatenate([state.rho[1:], (1.0 / sy)[None]]), state.rho)
  accepted = _new_iteration(state, new_x, lo_value, lo_grad, s_mem, y_mem, rho_mem)
  accepted = accepted._replace(status=jnp.where(
      jnp.max(jnp.abs(lo_grad)) <= options.gtol, GRADIENT_BELOW_GTOL, RUNNING))

  # Not taken: the next trial is the safeguarded cubic minimiser inside the bracket, or an
  # extrapolation while there is no upper end.
  width = hi - lo
  inside = _cubic_minimizer(lo, lo_value, lo_slope, hi, hi_value, hi_slope)
  inside = jnp.where(jnp.isfinite(inside), inside, lo + 0.5 * width)
  inside = jnp.clip(inside, lo + 0.1 * width, hi - 0.1 * width)
  outside = _cubic_minimizer(state.lo, state.lo_value, state.lo_slope, alpha, value, slope)
  outside = jnp.clip(jnp.where(jnp.isfinite(outside), outside, 4.0 * alpha), 1.1 * alpha,
                     4.0 * alpha)
  give_up = out_of_trials & ~accept
  searching = state._replace(
      step=jnp.where(give_up, 0.0, jnp.where(jnp.isfinite(hi), inside, outside)), lo=lo,
      lo_value=lo_value, lo_slope=lo_slope, lo_grad=lo_grad, hi=hi, hi_value=hi_value,
      hi_slope=hi_slope, trials=trials, status=jnp.where(give_up, LINE_SEARCH_FAILED, RUNNING))

  after = _select(first, started, _select(accept, accepted, searching))
  history = state.history.at[state.evaluations].set(after.value)
  earlier = history[jnp.maximum(state.evaluations - options.window, 0)]
  stalled = (evaluations > options.window) & (
      earlier - after.value <= options.ftol * jnp.abs(after.value))
  status = jnp.where(stalled, DECREASE_BELOW_FTOL, BUDGET_SPENT)
  after = after._replace(evaluations=evaluations, status=jnp.where(
      (after.status == RUNNING) & (stalled | (evaluations >= options.max_evaluations)), status,
      after.status))
  # A stopped problem's trial point is x, and the rest of its history its final loss.
  after = after._replace(step=jnp.where(done(after), 0.0, after.step), history=jnp.where(
      done(after) & (jnp.arange(history.shape[0]) >= state.evaluations), after.value, history))
  return _select(done(state), state, after)
