"""Guided sampling as one jitted loop: the paper's ancestral sampler (Algorithm 2), DDIM, and
Euler / Heun on the probability-flow ODE.

`sample` is pure and takes any ε-function (z, λ, labels) → ε: the U-Net, or an exact ε of a known
distribution in tests. Each network evaluation is ONE forward call on [z, z] with labels [c, ∅]
(or, outside a guidance interval, one conditional forward on z). The guidance strength w (paper's
w: 0 = conditional) is a traced per-sample array, so a sweep over w reuses one compilation. The
noise of sample i depends only on (rng, sample_ids[i]), never on the batch layout or the device
count.

All samplers walk the same grid λ_1 = λ_min < … < λ_T = λ_max (`schedules.sampling_logsnrs`): step
t evaluates the network at λ_t, turns ε̃ into x̃ (then CFG rescale, then thresholding), moves z
to λ_{t+1} for t < T, and the last step returns x̃ at λ_max. `sampler` picks the move:

- 'ancestral' (the paper's): z' = μ̃(z, x̃) + √((σ̃²)^{1−v} (σ²_{λ|λ'})^v) · noise.
- 'ddim' (Song et al. 2021): z' = α' x̃ + σ' √(1 − η²(1 − e^{λ−λ'})) ε̂ + η σ̃ · noise, with
  σ̃² = (1 − e^{λ−λ'}) σ'² the posterior variance. η = 0 is deterministic (the noise of a sample
  is only its initial z); η = 1 is exactly 'ancestral' with v = 0.
- 'euler', 'heun': the probability-flow ODE in its data-prediction form, in y = z/σ over
  v = α/σ = e^{λ/2} (a monotone reparameterisation of λ): dy/dv = x̃(z, λ). An Euler step,
  written in z with stable factors, is z' = (σ'/σ) z − α' expm1((λ − λ')/2) x̃ — algebraically
  DDIM with η = 0 (and Euler in EDM's u = σ/α = 1/v on dx/du = ε̂). Heun (2nd order) averages x̃
  at both ends of each step (2 evaluations per step); its last step, the jump from λ_max to the
  returned x̃ (v = ∞), is Euler. Heun makes 2T − 1 network evaluations, the others T.
  Why v and not u: Heun in u averages ε̂ at u = e^{10} (λ_min = −20) and at the end of a step of
  Δu ≈ 2·10⁴, and that Δu multiplies the difference of the two ε̂ (it explodes for T <= 16 on
  the 2D mixture); in v the Heun correction is α'(x̃_2 − x̃_1)/2 — bounded at both ends of the
  grid, because x̃ is. Plain Euler in λ itself is unusable on this grid (α changes by e^{6} over
  one step near λ_min).

ε̂ = (z − α x̃)/σ is the ε consistent with the rescaled / thresholded x̃, computed as
ε̃ + e^{λ/2} (x̃_raw − x̃) so that it equals ε̃ exactly when nothing was changed; DDIM steps with
it (Euler / Heun step with x̃ itself, i.e. with a thresholded denoiser as in Karras et al.).

Guidance variants (all static settings, per network evaluation):
- `guidance_interval=(λ_lo, λ_hi)`: guide only where λ_lo <= λ <= λ_hi; elsewhere the step runs
  the conditional half only, through `lax.cond`, so it costs one forward of batch B, not 2B.
  Kynkäänniemi et al. state intervals in σ_EDM; see `guidance.interval_from_sigmas`.
- `rescale_phi` φ (Lin et al. 2023): x̃ ← φ x̃ std(x̂_c)/std(x̃) + (1 − φ) x̃ per sample, on the
  x̂ predictions as in the paper.
- `thresholding`: 'none', 'static' (clip x̃ to [−1, 1]) or 'dynamic' (Imagen, percentile
  `dynamic_threshold_p`). `clip_x` is the older switch of the static clip: static clipping
  happens iff thresholding == 'static' and clip_x, so clip_x=False turns 'static' into 'none'
  and does not affect 'dynamic' (which keeps |x̃| <= 1 by itself).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cfg_jax import diffusion, guidance, schedules, sharding
from cfg_jax.guidance import EpsFn

SAMPLERS = ("ancestral", "ddim", "euler", "heun")
THRESHOLDING_MODES = guidance.THRESHOLDING_MODES


def _interval_or_none(interval) -> tuple[float, float] | None:
  """() / None → None (guide everywhere); otherwise a (λ_lo, λ_hi) tuple of floats."""
  if interval is None or len(interval) == 0:
    return None
  if len(interval) != 2:
    raise ValueError(f"sampling.guidance_interval must be () or (lambda_lo, lambda_hi), got "
                     f"{tuple(interval)}.")
  return float(interval[0]), float(interval[1])


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static settings of the sampling loop (changing them recompiles)."""
  num_steps: int = 256
  logsnr_min: float = schedules.LOGSNR_MIN
  logsnr_max: float = schedules.LOGSNR_MAX
  v: float = 0.3          # variance interpolation (paper: 0.3 at 64×64, 0.2 at 128×128)
  clip_x: bool = True     # static clip of x̃ to [−1, 1]; False turns thresholding 'static' off
  guided: bool = True     # False: conditional half only (no ∅ pass; w is ignored)
  sampler: str = "ancestral"   # ancestral | ddim | euler | heun
  eta: float = 0.0        # DDIM η in [0, 1]: 0 deterministic, 1 = ancestral with v = 0
  guidance_interval: tuple[float, float] | None = None  # (λ_lo, λ_hi); None: guide everywhere
  rescale_phi: float = 0.0     # CFG rescale φ in [0, 1]; 0 = off
  thresholding: str = "static"  # none | static | dynamic
  dynamic_threshold_p: float = 0.995  # percentile of |x̃| for dynamic thresholding

  @classmethod
  def from_config(cls, config, *, num_steps: int | None = None) -> "SamplerConfig":
    """From a cfg_jax config's `sampling` and `diffusion` sections (num_steps overrides T)."""
    s = config.sampling
    return cls(num_steps=num_steps or s.num_steps,
               logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max,
               v=s.v, clip_x=s.clip_x, sampler=s.sampler, eta=s.eta,
               guidance_interval=_interval_or_none(s.guidance_interval),
               rescale_phi=s.rescale_phi, thresholding=s.thresholding,
               dynamic_threshold_p=s.dynamic_threshold_p)

  def __post_init__(self):
    schedules.check_logsnr_range(self.logsnr_min, self.logsnr_max)
    object.__setattr__(self, "guidance_interval", _interval_or_none(self.guidance_interval))
    if self.num_steps < 2:
      raise ValueError(f"sampling.num_steps must be >= 2, got {self.num_steps}.")
    if not 0.0 <= self.v <= 1.0:
      raise ValueError(f"sampling.v must be in [0, 1] (paper: 0.3 at 64x64), got {self.v}.")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampling.sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"sampling.eta must be in [0, 1] (0 = deterministic DDIM), got {self.eta}.")
    if self.guidance_interval is not None:
      lo, hi = self.guidance_interval
      if np.isnan(lo) or np.isnan(hi) or lo > hi:
        raise ValueError(f"sampling.guidance_interval must be (lambda_lo, lambda_hi) with "
                         f"lambda_lo <= lambda_hi, got {self.guidance_interval}.")
    if not 0.0 <= self.rescale_phi <= 1.0:
      raise ValueError(f"sampling.rescale_phi must be in [0, 1] (0 = off), got {self.rescale_phi}.")
    if self.thresholding not in THRESHOLDING_MODES:
      raise ValueError(f"sampling.thresholding must be one of {THRESHOLDING_MODES}, got "
                       f"{self.thresholding!r}.")
    if not 0.0 < self.dynamic_threshold_p <= 1.0:
      raise ValueError(f"sampling.dynamic_threshold_p must be in (0, 1] (Imagen: 0.995), got "
                       f"{self.dynamic_threshold_p}.")

  @property
  def effective_thresholding(self) -> str:
    """The thresholding applied: 'static' needs clip_x; 'dynamic' and 'none' ignore it."""
    if self.thresholding == "static" and not self.clip_x:
      return "none"
    return self.thresholding

  def logsnrs(self) -> jax.Array:
    """The grid λ_1 = λ_min < … < λ_T = λ_max, float32 [T]."""
    return schedules.sampling_logsnrs(self.num_steps, logsnr_min=self.logsnr_min,
                                      logsnr_max=self.logsnr_max)

  def eval_logsnrs(self) -> np.ndarray:
    """λ of every network evaluation of one sampling run, in order (Heun: 2T − 1 of them)."""
    grid = np.asarray(self.logsnrs())
    if self.sampler != "heun":
      return grid
    return np.concatenate([np.stack([grid[:-1], grid[1:]], axis=1).reshape(-1), grid[-1:]])

  def guided_evals(self) -> int:
    """How many network evaluations run the batched [z, z] forward (the others run z only)."""
    if not self.guided:
      return 0
    inside = guidance.in_interval(jnp.asarray(self.eval_logsnrs()),
                                  interval=self.guidance_interval)
    return int(np.sum(np.asarray(inside)))

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable settings for results files."""
    interval = self.guidance_interval
    return {"sampler": self.sampler, "num_steps": int(self.num_steps),
            "logsnr_min": float(self.logsnr_min), "logsnr_max": float(self.logsnr_max),
            "v": float(self.v), "eta": float(self.eta), "guided": bool(self.guided),
            "guidance_interval": None if interval is None else [float(x) for x in interval],
            "rescale_phi": float(self.rescale_phi), "thresholding": self.effective_thresholding,
            "clip_x": bool(self.clip_x), "dynamic_threshold_p": float(self.dynamic_threshold_p),
            "network_evals": int(len(self.eval_logsnrs())),
            "guided_evals": self.guided_evals()}


def per_sample_keys(rng: jax.Array, sample_ids: jax.Array) -> jax.Array:
  """One key per sample from its global index, independent of how samples are batched."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, sample_ids)


def _normal(keys: jax.Array, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(keys)


def _denoise(eps_fn: EpsFn, *, z: jax.Array, logsnr: jax.Array, labels: jax.Array, w: jax.Array,
             null_label: int, config: SamplerConfig) -> tuple[jax.Array, jax.Array]:
  """One network evaluation at the scalar λ: returns (x̃, ε̂) after guidance, rescale and
  thresholding; ε̂ = ε̃ + e^{λ/2}(x̃_raw − x̃) is the ε consistent with the final x̃."""
  lam = jnp.full(z.shape[:1], logsnr, jnp.float32)
  if config.guided:
    eps, eps_c = guidance.interval_guided_eps(eps_fn, z=z, logsnr=lam, labels=labels, w=w,
                                              null_label=null_label,
                                              interval=config.guidance_interval)
  else:
    eps = eps_c = eps_fn(z, lam, labels)
  x_raw = diffusion.x_from_eps(z=z, eps=eps, logsnr=lam)
  x = x_raw
  if config.guided and config.rescale_phi > 0:
    x = guidance.rescale_guided(x_guided=x, x_cond=diffusion.x_from_eps(z=z, eps=eps_c, logsnr=lam),
                                phi=config.rescale_phi)
  x = guidance.threshold(x, mode=config.effective_thresholding, p=config.dynamic_threshold_p)
  if x is x_raw:
    return x, eps
  return x, eps + jnp.exp(0.5 * jnp.asarray(logsnr, jnp.float32)) * (x_raw - x)


def _ancestral_step(*, z, x, logsnr, logsnr_next, v, noise):
  """The paper's step: z' = μ̃(z, x̃) + √((σ̃²)^{1−v} (σ²_{λ|λ'})^v) · noise."""
  mean, _ = diffusion.posterior_mean_variance(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next)
  log_var = diffusion.sampler_log_variance(logsnr=logsnr, logsnr_next=logsnr_next, v=v)
  return mean + jnp.exp(0.5 * log_var) * noise


def _ddim_step(*, x, eps, logsnr, logsnr_next, eta, noise):
  """z' = α' x̃ + σ' √(1 − η²(1 − e^{λ−λ'})) ε̂ + η σ' √(1 − e^{λ−λ'}) · noise (noise may be
  None when η = 0)."""
  alpha_next, sigma_next = schedules.alpha_sigma(logsnr_next)
  one_minus_r = diffusion.one_minus_exp_diff(logsnr=logsnr, logsnr_next=logsnr_next)
  z = alpha_next * x + sigma_next * jnp.sqrt(1.0 - eta**2 * one_minus_r) * eps
  if noise is None:
    return z
  return z + eta * sigma_next * jnp.sqrt(one_minus_r) * noise


def _ode_step(*, z, slope, logsnr, logsnr_next):
  """Euler step of dy/dv = x̃ (y = z/σ, v = e^{λ/2}) with slope x̃, written in z:
  z' = (σ'/σ) z − α' expm1((λ − λ')/2) x̃."""
  lam, lam_next = jnp.asarray(logsnr, jnp.float32), jnp.asarray(logsnr_next, jnp.float32)
  sigma_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(-lam_next) - jax.nn.log_sigmoid(-lam)))
  alpha_next, _ = schedules.alpha_sigma(lam_next)
  return sigma_ratio * z - alpha_next * jnp.expm1(0.5 * (lam - lam_next)) * slope


def sample(eps_fn: EpsFn, *, rng: jax.Array, sample_ids: jax.Array, labels: jax.Array,
           w: jax.Array, shape: tuple[int, ...], null_label: int,
           config: SamplerConfig = SamplerConfig(), z_init: jax.Array | None = None
           ) -> jax.Array:
  """Draws x ~ p(x | c) with guidance strength w; returns x̃ at λ_max, shape [B, *shape].

  For t = 1..T over λ_1 = λ_min < … < λ_T = λ_max: ε̃ = (1 + w) ε(z, c) − w ε(z, ∅),
  x̃ = (z − σ ε̃)/α (then rescale and thresholding), and, for t < T, z moves to λ_{t+1} with
  `config.sampler`'s step (see the module docstring). z starts from per-sample noise, or from
  `z_init` [B, *shape] when given (the other noise still comes from (rng, sample_ids)).
  """
  if sample_ids.ndim != 1 or labels.shape != sample_ids.shape:
    raise ValueError(f"sample_ids {sample_ids.shape} and labels {labels.shape} must be [B].")
  b = sample_ids.shape[0]
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (b,))
  keys = per_sample_keys(rng, sample_ids)
  logsnrs = config.logsnrs()
  last = config.num_steps - 1

  def denoise(z, logsnr):
    return _denoise(eps_fn, z=z, logsnr=logsnr, labels=labels, w=w, null_label=null_label,
                    config=config)

  def move(t, z, x, eps, logsnr, logsnr_next):
    """z at λ_{t+1} from z, x̃, ε̂ at λ_t."""
    if config.sampler == "ancestral":
      return _ancestral_step(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next, v=config.v,
                             noise=_normal(keys, t + 1, shape))
    if config.sampler == "ddim":
      noise = _normal(keys, t + 1, shape) if config.eta > 0 else None
      return _ddim_step(x=x, eps=eps, logsnr=logsnr, logsnr_next=logsnr_next, eta=config.eta,
                        noise=noise)
    z_euler = _ode_step(z=z, slope=x, logsnr=logsnr, logsnr_next=logsnr_next)
    if config.sampler == "euler":
      return z_euler
    # Heun: average the slopes x̃ at both ends. Skipped (lax.cond) at the last step, whose move
    # is discarded anyway, so it costs no network evaluation there.
    def correct(_):
      x_next, _ = denoise(z_euler, logsnr_next)
      return _ode_step(z=z, slope=0.5 * (x + x_next), logsnr=logsnr, logsnr_next=logsnr_next)
    return jax.lax.cond(t < last, correct, lambda _: z_euler, None)

  def body(t, carry):
    z, _ = carry
    # At t = T−1 there is no next λ: take λ' = λ_{t+1} clamped (= λ) and discard the move.
    logsnr, logsnr_next = logsnrs[t], logsnrs[jnp.minimum(t + 1, last)]
    x, eps = denoise(z, logsnr)
    z_next = move(t, z, x, eps, logsnr, logsnr_next)
    return jnp.where(t < last, z_next, z), x

  z0 = _normal(keys, 0, shape) if z_init is None else jnp.asarray(z_init, jnp.float32)
  if z0.shape != (b, *shape):
    raise ValueError(f"z_init has shape {z0.shape}, expected {(b, *shape)}.")
  _, x = jax.lax.fori_loop(0, config.num_steps, body, (z0, jnp.zeros_like(z0)))
  return x


def unet_eps_fn(apply_fn: Callable[..., jax.Array], params: Any) -> EpsFn:
  """Wraps a Flax apply function as an ε-function in inference mode."""
  return lambda z, logsnr, labels: apply_fn({"params": params}, z, logsnr, labels, train=False)


def make_sampler(apply_fn: Callable[..., jax.Array], *, shape: tuple[int, ...], null_label: int,
                 config: SamplerConfig, mesh: Mesh | None = None):
  """Returns jitted f(params, rng, sample_ids, labels, w) -> x, batch-sharded over all devices of
  `mesh` with replicated params (`generate` gathers fsdp-sharded params first)."""
  def f(params, rng, sample_ids, labels, w):
    return sample(unet_eps_fn(apply_fn, params), rng=rng, sample_ids=sample_ids, labels=labels,
                  w=w, shape=tuple(shape), null_label=null_label, config=config)

  if mesh is None:
    return jax.jit(f)
  rep, dat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(f, in_shardings=(rep, rep, dat, dat, dat), out_shardings=dat)


def generate(sampler, params, rng: jax.Array, *, labels: np.ndarray, w: np.ndarray | float,
             batch_size: int, num_devices: int = 1, first_id: int = 0,
             mesh: Mesh | None = None) -> np.ndarray:
  """Runs `sampler` over all `labels` in batches; pads each batch to a multiple of num_devices.

  Sample i uses id first_id + i, so the result does not depend on batch_size or devices. With
  `mesh` (the sampler's; needed when it spans several processes) num_devices is its size and
  each batch is placed as global arrays split over it; every process returns all samples.
  Params sharded over a mesh axis (fsdp training) are gathered to replicated once per call.
  """
  params = sharding.gather_replicated(params)
  labels = np.asarray(labels, np.int32)
  n = labels.shape[0]
  if mesh is not None:
    num_devices, dat = mesh.size, sharding.batch_sharded(mesh)
    put = lambda a: sharding.host_to_global(a, dat)
  else:
    put = lambda a: a
  w = np.broadcast_to(np.asarray(w, np.float32), (n,))
  batch_size = int(np.ceil(batch_size / num_devices) * num_devices)
  out = []
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = (-(stop - start)) % num_devices
    ids = np.arange(first_id + start, first_id + stop + pad, dtype=np.int32)
    lab = np.concatenate([labels[start:stop], np.repeat(labels[stop - 1:stop], pad)])
    ww = np.concatenate([w[start:stop], np.repeat(w[stop - 1:stop], pad)])
    x = sampler(params, rng, put(ids), put(lab), put(ww))
    out.append(sharding.to_host(x)[: stop - start])
  return np.concatenate(out, axis=0)
