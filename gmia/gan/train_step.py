"""One StyleGAN2 training iteration as a single jitted, data-parallel function.

The iteration runs NVIDIA's phases in order: G main, G path-length regularisation (every
`g_reg_interval` steps), D main, D R1 regularisation (every `d_reg_interval` steps), then the EMA
update. Each phase is an Adam step of its network; the regularisation phases run under
`lax.cond`, so one compiled program serves every step; their penalties are carried in the
state, so every step reports the latest measured ones. Lazy regularisation makes Adam take
interval + 1 steps per interval, which NVIDIA offsets with mb_ratio = interval / (interval + 1):
lr *= mb_ratio, betas **= mb_ratio.

The training state is a plain dict (see `init_state`), replicated over the mesh; real images
and every latent batch are split over the mesh's `data` axis. Besides the losses, a step reports
`grads_nonfinite`: how many gradient entries of its phases were NaN or inf (and replaced, as
NVIDIA does, so training goes on while the losses and parameters stay finite).

With `config.privacy.enabled` the step is person-level DP-SGD (Abadi et al. 2016, at the level of
people: McMahan et al. 2018). The updates that read real photos, D main and D R1, are computed
from Poisson-sampled people (gmia.privacy.sampling): each person's gradient of their part of the
loss (their photos' softplus(-D(x)), or their photos' R1 penalty, summed and divided by
max_photos_per_person) is clipped to a norm, the people's sum gets Gaussian noise
(gmia.privacy.clipping) and is divided by the expected number of people per step. D's fake term
reads no photo: its gradient, taken as in the ordinary step on the same fakes, is added after the
noise, unclipped, so the whole clipping budget goes to the photos and the fakes cost no privacy
(they are a function of G, itself computed from earlier noisy releases only). The R1 update
releases again from its step's sample, with its own clip norm (its gradients are on another
scale) and the same noise multiplier; gmia.privacy.accounting counts such a step at
noise_multiplier / sqrt(2). G's phases and the EMA read only D and latents: post-processing.
With no clipping and no noise the private step equals the ordinary one on the same photos, up to
the order of floating-point sums (tests/test_train_gan_dp.py). D's minibatch-std layer must be
off: within one person's photos its statistic would tell D one person from many fakes. A
private step stores and reports nothing else computed from photos: the real logits, D's loss and
the R1 penalty are left out of its metrics and state. The guarantee covers what the run releases
(the generator); its checkpoints hold the seed and RNG key from which the noise is drawn, so they
stay with the owner, as any DP-SGD training state does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from gmia import parallel
from gmia.gan import losses
from gmia.training import ema
from gmia.models import stylegan
from gmia.privacy import clipping

State = dict[str, Any]
# fold_in data for the DP noise key of a step: above the counters its split(key, 4) uses.
_NOISE_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class GanModels:
  generator: stylegan.Generator
  discriminator: stylegan.Discriminator


def build_models(config: ml_collections.ConfigDict) -> GanModels:
  """The generator and discriminator described by `config.data.resolution` and `config.model`."""
  m = config.model
  stylegan.check_resolution(config.data.resolution)
  common = dict(img_resolution=config.data.resolution, channel_base=m.channel_base,
                channel_max=m.channel_max)
  return GanModels(
      stylegan.Generator(z_dim=m.z_dim, w_dim=m.w_dim, mapping_layers=m.mapping_layers,
                         fused_modconv=m.fused_modconv, **common),
      stylegan.Discriminator(architecture=m.d_architecture, mbstd_group_size=m.mbstd_group_size,
                             mbstd_num_channels=m.mbstd_num_channels, **common))


def make_optimizer(lr: float, betas: tuple[float, float], eps: float,
                   reg_interval: int) -> optax.GradientTransformation:
  """Adam with NVIDIA's lazy-regularisation correction of lr and betas.

  Non-finite gradients are replaced first (NVIDIA's nan_to_num). The update runs on all
  parameters raveled into one vector: a handful of fused ops instead of several per leaf, which
  keeps the step's program (and its compile time) small. The Adam moments are stored flat.
  """
  mb_ratio = reg_interval / (reg_interval + 1)
  return optax.flatten(optax.chain(
      optax.stateless(lambda g, _: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5)),
      optax.adam(lr * mb_ratio, b1=betas[0] ** mb_ratio, b2=betas[1] ** mb_ratio, eps=eps)))


def optimizers(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, ...]:
  """(generator, discriminator) optimisers."""
  o, l = config.optimizer, config.loss
  return (make_optimizer(o.g_lr, tuple(o.betas), o.eps, l.g_reg_interval),
          make_optimizer(o.d_lr, tuple(o.betas), o.eps, l.d_reg_interval))


def init_state(config: ml_collections.ConfigDict, models: GanModels) -> State:
  """Fresh training state from `config.seed`: a plain nested dict of arrays.

  Keys: step, key (RNG key data), g_params, g_buffers (w_avg, noise_const), g_ema (EMA of
  g_params), d_params, g_opt, d_opt (optax states), pl_mean, and the latest measured penalties
  r1_penalty and pl_penalty.
  """
  seed_key = jax.random.key(config.seed)
  k_g, k_d, k_noise, k_train = jax.random.split(seed_key, 4)
  res = config.data.resolution
  g_vars = models.generator.init({"params": k_g, "noise": k_noise},
                                 jnp.zeros((1, config.model.z_dim)))
  d_params = models.discriminator.init(k_d, jnp.zeros((1, res, res, 3)))["params"]
  g_tx, d_tx = optimizers(config)
  return {
      "step": jnp.zeros((), jnp.int32),
      "key": jax.random.key_data(k_train),
      "g_params": g_vars["params"],
      "g_buffers": g_vars["buffers"],
      "g_ema": g_vars["params"],
      "d_params": d_params,
      "g_opt": g_tx.init(g_vars["params"]),
      "d_opt": d_tx.init(d_params),
      "pl_mean": jnp.zeros((), jnp.float32),
      "r1_penalty": jnp.zeros((), jnp.float32),
      "pl_penalty": jnp.zeros((), jnp.float32),
  }


def _adam_step(tx: optax.GradientTransformation, params, opt_state, grads):
  """One optimiser step: (params + tx's update of grads, opt_state, the number of non-finite
  gradient entries, which the optimiser replaced)."""
  updates, opt_state = tx.update(grads, opt_state, params)
  nonfinite = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads))
  return optax.apply_updates(params, updates), opt_state, nonfinite


def r1_clip_norm(config: ml_collections.ConfigDict) -> float:
  """The clip norm of the private R1 update: privacy.r1_clip_norm, or clip_norm when -1."""
  privacy = config.privacy
  return privacy.clip_norm if privacy.r1_clip_norm == -1 else privacy.r1_clip_norm


def private_r1(config: ml_collections.ConfigDict) -> bool:
  """Whether a private run makes R1 updates (none when r1_gamma is 0: they would be noise)."""
  return config.loss.r1_gamma > 0


def _check_private(config: ml_collections.ConfigDict, noise_multiplier: float | None) -> None:
  if noise_multiplier is None or noise_multiplier < 0:
    raise ValueError(f"a private step needs a non-negative noise multiplier (from "
                     f"gmia.privacy.accounting.plan), got {noise_multiplier}")
  if config.model.mbstd_num_channels > 0 and config.model.mbstd_group_size != 1:
    raise ValueError("privacy: D's minibatch-std layer would compare photos of one person "
                     "against many fakes; set model.mbstd_num_channels=0 for DP training")
  if not 0 < r1_clip_norm(config):
    raise ValueError(f"privacy.r1_clip_norm must be -1 (clip_norm) or positive, got "
                     f"{config.privacy.r1_clip_norm}")


def make_train_step(config: ml_collections.ConfigDict, models: GanModels, mesh: Mesh,
                    noise_multiplier: float | None = None) -> Callable[[State, Any],
                                                                       tuple[State, dict]]:
  """Returns `train_step(state, reals) -> (state, metrics)`, to be jitted (the training loop
  does, with the state donated).

  reals: f32[batch_size, R, R, 3] in [-1, 1], sharded over `data`; with config.privacy.enabled,
  the step's people instead (gmia.privacy.sampling): {"images": f32[S, K, R, R, 3],
  "mask": f32[S, K]} for S slots of K = privacy.max_photos_per_person photos, sharded over
  `data`, and `noise_multiplier` is that of the run's privacy plan. The step's randomness is
  fold_in(state key, state step), so a step is a pure function of the state and the batch.
  """
  G, D = models.generator, models.discriminator
  cfg_loss, batch = config.loss, config.batch_size
  private = config.privacy.enabled
  if private:
    _check_private(config, noise_multiplier)
  pl_batch = batch // cfg_loss.pl_batch_shrink
  parallel.check_divisible(batch, mesh)
  if cfg_loss.pl_weight > 0:
    parallel.check_divisible(pl_batch, mesh)
  if cfg_loss.d_reg_interval < 1 or cfg_loss.g_reg_interval < 1:
    raise ValueError("d_reg_interval and g_reg_interval must be >= 1 (lazy regularisation)")
  g_tx, d_tx = optimizers(config)
  data_sharding = parallel.data_sharding(mesh)

  def mapped(g_params, g_buffers, key, n):
    """n latents -> ws f32[n, num_ws, w_dim] with style mixing; also returns the buffers with
    w_avg tracked. The latents and their mixing partners come from one random draw."""
    k_z, k_mix = jax.random.split(key)
    mixing = cfg_loss.style_mixing_prob > 0
    z = jax.random.normal(k_z, (n, 1 + mixing, config.model.z_dim))
    z = jax.lax.with_sharding_constraint(z, data_sharding)
    g_vars = {"params": g_params, "buffers": g_buffers}
    ws, updated = G.apply(g_vars, z[:, 0], update_w_avg=True, method="map", mutable=["buffers"])
    if mixing:
      ws_mix = G.apply(g_vars, z[:, 1], method="map")
      ws = stylegan.style_mix(k_mix, ws, ws_mix, cfg_loss.style_mixing_prob)
    return ws, updated["buffers"]

  def synthesize(g_params, g_buffers, ws, key):
    return G.apply({"params": g_params, "buffers": g_buffers}, ws, method="synthesize",
                   rngs={"noise": key})

  def discriminate(d_params, images):
    return D.apply({"params": d_params}, images)

  def g_main_loss(g_params, g_buffers, d_params, key):
    k_map, k_syn = jax.random.split(key)
    ws, g_buffers = mapped(g_params, g_buffers, k_map, batch)
    fake_logits = discriminate(d_params, synthesize(g_params, g_buffers, ws, k_syn))
    return losses.generator_loss(fake_logits), g_buffers

  def g_reg_loss(g_params, g_buffers, pl_mean, key):
    k_map, k_syn, k_noise = jax.random.split(key, 3)
    ws, g_buffers = mapped(g_params, g_buffers, k_map, pl_batch)
    penalty, pl_mean = losses.path_length_penalty(
        lambda w: synthesize(g_params, g_buffers, w, k_syn), ws, k_noise, pl_mean,
        cfg_loss.pl_decay)
    loss = jnp.mean(penalty) * cfg_loss.pl_weight * cfg_loss.g_reg_interval
    return loss, (g_buffers, pl_mean, jnp.mean(penalty))

  def d_main_loss(d_params, fakes, reals):
    real_logits, fake_logits = discriminate(d_params, reals), discriminate(d_params, fakes)
    return losses.discriminator_loss(real_logits, fake_logits), (real_logits, fake_logits)

  def d_reg_loss(d_params, reals):
    penalty, _ = losses.r1_penalty(lambda x: discriminate(d_params, x), reals)
    loss = jnp.mean(penalty) * (cfg_loss.r1_gamma / 2) * cfg_loss.d_reg_interval
    return loss, jnp.mean(penalty)

  max_photos = config.privacy.max_photos_per_person

  def person_real_loss(d_params, images, mask):
    """One person's part of D's real term: softplus(-D(x)) of their photos [K, R, R, 3] (mask
    [K] of the real ones), summed, / K. Summed over P people of K photos and divided by P, it
    is the ordinary step's mean over a batch of P * K photos."""
    return jnp.sum(mask * jax.nn.softplus(-discriminate(d_params, images))) / max_photos

  def person_r1_loss(d_params, images, mask):
    """One person's part of the R1 loss, scaled as `d_reg_loss`'s."""
    penalty, _ = losses.r1_penalty(lambda x: discriminate(d_params, x), images)
    return (jnp.sum(mask * penalty) / max_photos * (cfg_loss.r1_gamma / 2)
            * cfg_loss.d_reg_interval)

  def d_fake_loss(d_params, fakes):
    """D's fake term of `losses.discriminator_loss`: mean softplus(D(G(z)))."""
    fake_logits = discriminate(d_params, fakes)
    return jnp.mean(jax.nn.softplus(fake_logits)), fake_logits

  def private_grads(person_loss, d_params, people, clip_norm, key):
    return clipping.noisy_mean_gradient(
        person_loss, d_params, (people["images"], people["mask"]), mesh=mesh, clip_norm=clip_norm,
        noise_multiplier=noise_multiplier, people_per_step=config.privacy.people_per_step,
        key=key)

  def d_phases(state, d_params, d_opt, fakes, reals):
    """D main and (every d_reg_interval steps) D R1: (d_params, d_opt, non-finite gradient
    entries, metrics)."""
    step = state["step"]
    (d_loss, (real_logits, fake_logits)), grads = jax.value_and_grad(d_main_loss, has_aux=True)(
        d_params, fakes, reals)
    d_params, d_opt, d_nonfinite = _adam_step(d_tx, d_params, d_opt, grads)

    def d_reg(_):
      (_, penalty), grads = jax.value_and_grad(d_reg_loss, has_aux=True)(d_params, reals)
      return (*_adam_step(d_tx, d_params, d_opt, grads), penalty)

    d_params, d_opt, d_reg_nonfinite, r1_penalty = jax.lax.cond(
        step % cfg_loss.d_reg_interval == 0, d_reg,
        lambda _: (d_params, d_opt, jnp.zeros_like(d_nonfinite), state["r1_penalty"]), None)
    metrics = {"loss_d": d_loss, "d_real": jnp.mean(real_logits),
               "d_fake": jnp.mean(fake_logits), "r1_penalty": r1_penalty}
    return d_params, d_opt, d_nonfinite + d_reg_nonfinite, metrics

  def private_d_phases(state, d_params, d_opt, fakes, people, key):
    """`d_phases` with the photos' gradients private; metrics only of the fakes."""
    k_main, k_reg = jax.random.split(jax.random.fold_in(key, _NOISE_STREAM))
    (d_fake, fake_logits), fake_grads = jax.value_and_grad(d_fake_loss, has_aux=True)(
        d_params, fakes)
    real_grads = private_grads(person_real_loss, d_params, people, config.privacy.clip_norm,
                               k_main)
    grads = jax.tree.map(jnp.add, real_grads, fake_grads)
    d_params, d_opt, nonfinite = _adam_step(d_tx, d_params, d_opt, grads)
    if private_r1(config):
      def d_reg(_):
        grads = private_grads(person_r1_loss, d_params, people, r1_clip_norm(config), k_reg)
        return _adam_step(d_tx, d_params, d_opt, grads)

      d_params, d_opt, reg_nonfinite = jax.lax.cond(
          state["step"] % cfg_loss.d_reg_interval == 0, d_reg,
          lambda _: (d_params, d_opt, jnp.zeros_like(nonfinite)), None)
      nonfinite += reg_nonfinite
    return d_params, d_opt, nonfinite, {"loss_d_fake": d_fake, "d_fake": jnp.mean(fake_logits)}

  def train_step(state: State, reals: Any) -> tuple[State, dict]:
    step = state["step"]
    key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step)
    k_gmain, k_greg, k_dgen, k_dsyn = jax.random.split(key, 4)
    g_params, g_opt, d_params, d_opt = (state["g_params"], state["g_opt"], state["d_params"],
                                        state["d_opt"])

    (g_loss, g_buffers), grads = jax.value_and_grad(g_main_loss, has_aux=True)(
        g_params, state["g_buffers"], d_params, k_gmain)
    g_params, g_opt, nonfinite = _adam_step(g_tx, g_params, g_opt, grads)

    pl_mean, pl_penalty = state["pl_mean"], state["pl_penalty"]
    if cfg_loss.pl_weight > 0:
      def g_reg(_):
        (_, (buffers, mean, penalty)), grads = jax.value_and_grad(g_reg_loss, has_aux=True)(
            g_params, g_buffers, pl_mean, k_greg)
        return (*_adam_step(g_tx, g_params, g_opt, grads), buffers, mean, penalty)

      g_params, g_opt, g_reg_nonfinite, g_buffers, pl_mean, pl_penalty = jax.lax.cond(
          step % cfg_loss.g_reg_interval == 0, g_reg,
          lambda _: (g_params, g_opt, jnp.zeros_like(nonfinite), g_buffers, pl_mean, pl_penalty),
          None)
      nonfinite += g_reg_nonfinite

    ws, g_buffers = mapped(g_params, g_buffers, k_dgen, batch)
    fakes = synthesize(g_params, g_buffers, ws, k_dsyn)
    if private:
      d_params, d_opt, d_nonfinite, d_metrics = private_d_phases(state, d_params, d_opt, fakes,
                                                                 reals, key)
    else:
      d_params, d_opt, d_nonfinite, d_metrics = d_phases(state, d_params, d_opt, fakes, reals)

    beta = ema.ema_beta(step, batch, config.ema_kimg, config.ema_rampup)
    new_state = dict(state, step=step + 1, g_params=g_params, g_buffers=g_buffers,
                     g_ema=ema.ema_update(state["g_ema"], g_params, beta), d_params=d_params,
                     g_opt=g_opt, d_opt=d_opt, pl_mean=pl_mean,
                     r1_penalty=d_metrics.get("r1_penalty", state["r1_penalty"]),
                     pl_penalty=pl_penalty)
    metrics = {"loss_g": g_loss, **d_metrics, "ema_beta": beta,
               "grads_nonfinite": nonfinite + d_nonfinite}
    if cfg_loss.pl_weight > 0:
      metrics.update(pl_penalty=pl_penalty, pl_mean=pl_mean)
    return new_state, metrics

  return train_step
