"""The paper's guided sampler (Algorithm 2) and its relatives as one jitted loop: pure math.

`sample` takes any ε-function (z, λ, labels) → ε (the U-Net, or the exact ε of a known
distribution in tests) and a guidance method (`cfg_jax.guidance`; default the paper's
ε̃ = (1 + w) ε(z, c) − w ε(z, ∅) from ONE forward call on [z, z] with labels [c, ∅]) and walks
λ_1 = λ_min < … < λ_T = λ_max: `denoise` forms ε̃ and x̃ = (z − σ ε̃)/α (Algorithm 2, lines 3–4,
with the guidance variants), and one keyword-only step per sampler moves z to the next λ
(line 5): `ancestral_step` (the paper's), `ddim_step`, `euler_step`, `heun_step`. The strength
(w, the paper's: 0 = conditional) is traced per sample, so a sweep compiles once; the noise of
sample i depends only on (rng, sample_ids[i]). Placing batches on devices is `sampling_runner`'s
job. The math, notation and design reasons are in docs/samplers.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import diffusion, guidance, schedules
from cfg_jax.guidance import Aux, EpsFn, Method

SAMPLERS = ("ancestral", "ddim", "euler", "heun")
THRESHOLDING_MODES = guidance.THRESHOLDING_MODES


def _interval_or_none(interval) -> tuple[float, float] | None:
  """() / None → None (guide everywhere); otherwise a (λ_lo, λ_hi) tuple of floats."""
  if interval is None or len(interval) == 0:
    return None
  if len(interval) != 2:
    raise ValueError(
      f"sampling.guidance_interval must be () or (lambda_lo, lambda_hi), got {tuple(interval)}."
    )
  return float(interval[0]), float(interval[1])


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static settings of the sampling loop (changing them recompiles)."""

  num_steps: int = 256
  logsnr_min: float = schedules.LOGSNR_MIN
  logsnr_max: float = schedules.LOGSNR_MAX
  v: float = 0.3  # variance interpolation (paper: 0.3 at 64×64, 0.2 at 128×128)
  clip_x: bool = True  # static clip of x̃ to [−1, 1]; False turns thresholding 'static' off
  guided: bool = True  # False: the method's unguided prediction only (w is ignored)
  sampler: str = "ancestral"  # ancestral | ddim | euler | heun
  eta: float = 0.0  # DDIM η in [0, 1]: 0 deterministic, 1 = ancestral with v = 0
  guidance_interval: tuple[float, float] | None = None  # (λ_lo, λ_hi); None: guide everywhere
  rescale_phi: float = 0.0  # CFG rescale φ in [0, 1]; 0 = off
  thresholding: str = "static"  # none | static | dynamic
  dynamic_threshold_p: float = 0.995  # percentile of |x̃| for dynamic thresholding
  # A guided-distilled student (cfg_jax/distillation.py): ε(z, λ, c, w) is the guided ε̃ itself, from
  # ONE forward of batch B (w = 0 where guided=False or outside the guidance interval).
  w_conditioned: bool = False

  @classmethod
  def from_config(cls, config, *, num_steps: int | None = None) -> SamplerConfig:
    """From a cfg_jax config's `sampling` and `diffusion` sections (num_steps overrides T)."""
    s = config.sampling
    return cls(
      num_steps=num_steps or s.num_steps,
      logsnr_min=config.diffusion.logsnr_min,
      logsnr_max=config.diffusion.logsnr_max,
      v=s.v,
      clip_x=s.clip_x,
      sampler=s.sampler,
      eta=s.eta,
      guidance_interval=_interval_or_none(s.guidance_interval),
      rescale_phi=s.rescale_phi,
      thresholding=s.thresholding,
      dynamic_threshold_p=s.dynamic_threshold_p,
      w_conditioned=bool(config.distill.student),
    )

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
        raise ValueError(
          f"sampling.guidance_interval must be (lambda_lo, lambda_hi) with "
          f"lambda_lo <= lambda_hi, got {self.guidance_interval}."
        )
    if not 0.0 <= self.rescale_phi <= 1.0:
      raise ValueError(f"sampling.rescale_phi must be in [0, 1] (0 = off), got {self.rescale_phi}.")
    if self.w_conditioned and self.rescale_phi > 0:
      raise ValueError(
        f"sampling.rescale_phi={self.rescale_phi} needs the conditional prediction beside the "
        "guided one, which a distilled student (distill.student) does not compute: set "
        "--config.sampling.rescale_phi=0."
      )
    if self.thresholding not in THRESHOLDING_MODES:
      raise ValueError(
        f"sampling.thresholding must be one of {THRESHOLDING_MODES}, got {self.thresholding!r}."
      )
    if not 0.0 < self.dynamic_threshold_p <= 1.0:
      raise ValueError(
        f"sampling.dynamic_threshold_p must be in (0, 1] (Imagen: 0.995), got "
        f"{self.dynamic_threshold_p}."
      )

  @property
  def effective_thresholding(self) -> str:
    """The thresholding applied: 'static' needs clip_x; 'dynamic' and 'none' ignore it."""
    if self.thresholding == "static" and not self.clip_x:
      return "none"
    return self.thresholding

  def logsnrs(self) -> jax.Array:
    """The grid λ_1 = λ_min < … < λ_T = λ_max, float32 [T]."""
    return schedules.sampling_logsnrs(
      self.num_steps, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max
    )

  def eval_logsnrs(self) -> np.ndarray:
    """λ of every network evaluation of one sampling run, in order (Heun: 2T − 1 of them)."""
    grid = np.asarray(self.logsnrs())
    if self.sampler != "heun":
      return grid
    return np.concatenate([np.stack([grid[:-1], grid[1:]], axis=1).reshape(-1), grid[-1:]])

  def guided_evals(self) -> int:
    """How many network evaluations run the guidance method (inside the interval; classifier-free
    guidance: the batched [z, z] forward), the others its unguided prediction on z only."""
    if not self.guided or self.w_conditioned:
      return 0
    inside = guidance.in_interval(jnp.asarray(self.eval_logsnrs()), interval=self.guidance_interval)
    return int(np.sum(np.asarray(inside)))

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable settings for results files."""
    interval = self.guidance_interval
    student = {"w_conditioned": True} if self.w_conditioned else {}
    return {
      **student,
      "sampler": self.sampler,
      "num_steps": int(self.num_steps),
      "logsnr_min": float(self.logsnr_min),
      "logsnr_max": float(self.logsnr_max),
      "v": float(self.v),
      "eta": float(self.eta),
      "guided": bool(self.guided),
      "guidance_interval": None if interval is None else [float(x) for x in interval],
      "rescale_phi": float(self.rescale_phi),
      "thresholding": self.effective_thresholding,
      "clip_x": bool(self.clip_x),
      "dynamic_threshold_p": float(self.dynamic_threshold_p),
      "network_evals": int(len(self.eval_logsnrs())),
      "guided_evals": self.guided_evals(),
    }


def per_sample_keys(rng: jax.Array, sample_ids: jax.Array) -> jax.Array:
  """One key per sample from its global index, independent of how samples are batched."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, sample_ids)


def _normal(keys: jax.Array, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(keys)


def unet_eps_fn(apply_fn: Callable[..., jax.Array], params: Any) -> EpsFn:
  """Wraps a Flax apply function as an ε-function in inference mode (a distilled student's also
  takes w [B] as a fourth argument)."""

  def eps_fn(z, logsnr, labels, *w):
    return apply_fn({"params": params}, z, logsnr, labels, *w, train=False)

  return eps_fn


# --- one step per sampler: z at λ → z' at λ' > λ, given x̃ (and ε̂) at λ ----------------------


def ancestral_step(
  *,
  z: jax.Array,
  x: jax.Array,
  logsnr: jax.Array,
  logsnr_next: jax.Array,
  v: float,
  noise: jax.Array,
) -> jax.Array:
  """The paper's step: z' = μ̃(z, x̃) + √((σ̃²_{λ'|λ})^{1−v} (σ²_{λ|λ'})^v) · noise."""
  mean, _ = diffusion.posterior_mean_variance(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next)
  log_var = diffusion.sampler_log_variance(logsnr=logsnr, logsnr_next=logsnr_next, v=v)
  return mean + jnp.exp(0.5 * log_var) * noise


def ddim_step(
  *,
  x: jax.Array,
  eps: jax.Array,
  logsnr: jax.Array,
  logsnr_next: jax.Array,
  eta: float,
  noise: jax.Array | None = None,
) -> jax.Array:
  """z' = α' x̃ + σ' √(1 − η²(1 − e^{λ−λ'})) ε̂ + η σ' √(1 − e^{λ−λ'}) · noise (noise may be
  None when η = 0)."""
  alpha_next, sigma_next = schedules.alpha_sigma(logsnr_next)
  one_minus_r = diffusion.one_minus_exp_diff(logsnr=logsnr, logsnr_next=logsnr_next)
  z = alpha_next * x + sigma_next * jnp.sqrt(1.0 - eta**2 * one_minus_r) * eps
  if noise is None:
    return z
  return z + eta * sigma_next * jnp.sqrt(one_minus_r) * noise


def euler_step(
  *, z: jax.Array, x: jax.Array, logsnr: jax.Array, logsnr_next: jax.Array
) -> jax.Array:
  """Euler step of the probability-flow ODE dy/dρ = x̃ (y = z/σ, ρ = α/σ = e^{λ/2}), written
  in z: z' = (σ'/σ) z − α' expm1((λ − λ')/2) x̃."""
  lam, lam_next = jnp.asarray(logsnr, jnp.float32), jnp.asarray(logsnr_next, jnp.float32)
  sigma_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(-lam_next) - jax.nn.log_sigmoid(-lam)))
  alpha_next, _ = schedules.alpha_sigma(lam_next)
  return sigma_ratio * z - alpha_next * jnp.expm1(0.5 * (lam - lam_next)) * x


def heun_step(
  *,
  z: jax.Array,
  x: jax.Array,
  logsnr: jax.Array,
  logsnr_next: jax.Array,
  denoise_next: Callable[[jax.Array], jax.Array],
) -> jax.Array:
  """Heun (2nd order) on dy/dρ = x̃: an Euler step, then the Euler step again with the mean of
  x̃ at both ends; `denoise_next(z')` is x̃ at λ' (one more network evaluation)."""
  kw = dict(logsnr=logsnr, logsnr_next=logsnr_next)
  x_next = denoise_next(euler_step(z=z, x=x, **kw))
  return euler_step(z=z, x=0.5 * (x + x_next), **kw)


# --- Algorithm 2 ------------------------------------------------------------------------------


def denoise_step(
  eps_fn: EpsFn,
  *,
  z: jax.Array,
  logsnr: jax.Array,
  labels: jax.Array,
  w: jax.Array,
  null_label: int,
  config: SamplerConfig,
  method: Method = guidance.CFG,
  aux: Aux | None = None,
  step: jax.Array | int = 0,
  keys: jax.Array | None = None,
  state: Any = (),
) -> tuple[jax.Array, jax.Array, Any]:
  """Lines 3–4 of Algorithm 2 at the scalar λ: returns (x̃, ε̂, the method's state), z [B, ...],
  labels and w [B].

  ε̃ = `method.guided(...)` (classifier-free: (1 + w) ε(z, c) − w ε(z, ∅) from ONE forward call on
  [z, z] with labels [c, ∅]; `aux` holds the functions of the method's extra networks, `step` is
  the sampler step t, `keys` one key per sample, `state` what the method carries between steps),
  then x̃ = (z − σ ε̃)/α (or the method's own x̃). With guided=False, or λ outside the guidance
  interval, ε̃ is the method's unguided ε (the conditional model: one forward of B, not 2B) and
  the state is kept; then CFG rescale and thresholding change x̃. ε̂ = ε̃ + e^{λ/2}(x̃_raw − x̃) is
  the ε consistent with the final x̃ (ε̃ itself when nothing changed x̃), unless the method names
  the ε its step re-noises with (CFG++). A w-conditioned ε-function (config.w_conditioned, a
  distilled student) gives ε̃ = ε(z, c, w) from one forward of B, and λ may be one per sample.
  """
  b = z.shape[0]
  lam = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), (b,))
  aux = aux or {}
  inputs = guidance.Step(
    z=z, logsnr=lam, labels=labels, w=w, null_label=null_label, step=step, keys=keys
  )
  x_of = lambda eps: diffusion.x_from_eps(z=z, eps=eps, logsnr=lam)  # line 4: (z − σ ε̃)/α

  def guided(carry):  # line 3
    z, state = carry
    pred, state = method.guided(eps_fn, aux, inputs._replace(z=z), state)
    eps_step = pred.eps if pred.eps_step is None else pred.eps_step
    x = (x_of(pred.eps) if pred.x is None else pred.x) if method.predicts_x else None
    return (pred.eps, pred.eps_cond, eps_step, x), state

  def unguided(carry):
    z, state = carry
    eps = method.unguided(eps_fn, aux, inputs._replace(z=z))
    return (eps, eps, eps, x_of(eps) if method.predicts_x else None), state

  if config.w_conditioned:  # the student's ε̃ at w itself; w = 0 is its conditional model
    guide = config.guided & guidance.in_interval(lam, interval=config.guidance_interval)
    eps = eps_c = eps_fn(z, lam, labels, jnp.where(guide, w, 0.0))
    out = (eps, eps_c, eps, None)
  elif not config.guided:
    out, state = unguided((z, state))
  elif config.guidance_interval is None:
    out, state = guided((z, state))
  else:  # guide only inside the interval; outside, one forward of batch B instead of 2B
    inside = guidance.in_interval(logsnr, interval=config.guidance_interval)
    out, state = jax.lax.cond(inside, guided, unguided, (z, state))
  eps, eps_c, eps_step, x_raw = out
  x_raw = x_of(eps) if x_raw is None else x_raw
  x = x_raw
  if config.guided and config.rescale_phi > 0:
    x = guidance.rescale_guided(x_guided=x, x_cond=x_of(eps_c), phi=config.rescale_phi)
  x = guidance.threshold(x, mode=config.effective_thresholding, p=config.dynamic_threshold_p)
  if x is x_raw or method.own_step_eps:
    return x, eps_step, state
  return x, eps_step + jnp.exp(0.5 * diffusion.broadcast_logsnr(lam, x)) * (x_raw - x), state


def denoise(eps_fn: EpsFn, **kwargs) -> tuple[jax.Array, jax.Array]:
  """(x̃, ε̂) of `denoise_step` for methods that carry no state between steps."""
  x, eps, _ = denoise_step(eps_fn, **kwargs)
  return x, eps


def sample(
  eps_fn: EpsFn,
  *,
  rng: jax.Array,
  sample_ids: jax.Array,
  labels: jax.Array,
  w: jax.Array,
  shape: tuple[int, ...],
  null_label: int,
  config: SamplerConfig = SamplerConfig(),
  z_init: jax.Array | None = None,
  method: Method = guidance.CFG,
  aux: Aux | None = None,
) -> jax.Array:
  """Algorithm 2: draws x ~ p(x | c) with guidance strength w; returns x̃ at λ_max, [B, *shape].

  `method` (default classifier-free) forms the guided ε̃ with the functions `aux` of its extra
  networks (autoguidance: the guide's ε-function; classifier guidance: the classifier's logits).

  z_1 ~ N(0, I) per sample (or `z_init` [B, *shape]; the other noise still comes from (rng,
  sample_ids)); for t = 1..T: x̃_t from `denoise` (lines 3–4) and, for t < T, z_{t+1} from
  `config.sampler`'s step (line 5); the last step returns x̃_T.
  """
  if sample_ids.ndim != 1 or labels.shape != sample_ids.shape:
    raise ValueError(f"sample_ids {sample_ids.shape} and labels {labels.shape} must be [B].")
  b = sample_ids.shape[0]
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (b,))
  keys = per_sample_keys(rng, sample_ids)
  logsnrs, last = config.logsnrs(), config.num_steps - 1

  def predict(z, logsnr, t, state):  # (x̃, ε̂, state) at λ: lines 3–4
    return denoise_step(
      eps_fn,
      z=z,
      logsnr=logsnr,
      labels=labels,
      w=w,
      null_label=null_label,
      config=config,
      method=method,
      aux=aux,
      step=t,
      keys=keys,
      state=state,
    )

  def body(t, carry):
    z, _, state = carry
    # At t = T − 1 there is no next λ: λ' = λ_{t+1} clamped (= λ), and the move is discarded.
    logsnr, logsnr_next = logsnrs[t], logsnrs[jnp.minimum(t + 1, last)]
    x, eps, state = predict(z, logsnr, t, state)
    # Line 5: z_{t+1} from (z_t, x̃_t) by the paper's ancestral step or another sampler's.
    if config.sampler == "ancestral":
      z_next = ancestral_step(
        z=z,
        x=x,
        logsnr=logsnr,
        logsnr_next=logsnr_next,
        v=config.v,
        noise=_normal(keys, t + 1, shape),
      )
    elif config.sampler == "ddim":
      z_next = ddim_step(
        x=x,
        eps=eps,
        logsnr=logsnr,
        logsnr_next=logsnr_next,
        eta=config.eta,
        noise=_normal(keys, t + 1, shape) if config.eta > 0 else None,
      )
    elif config.sampler == "euler":
      z_next = euler_step(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next)
    else:  # heun; lax.cond skips its evaluation at λ' at the last step (the state then too)

      def heun(carry):
        z, state = carry
        x_next, _, state = predict(
          euler_step(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next), logsnr_next, t + 1, state
        )
        return euler_step(z=z, x=0.5 * (x + x_next), logsnr=logsnr, logsnr_next=logsnr_next), state

      z_next, state = jax.lax.cond(t < last, heun, lambda carry: carry, (z, state))
    return jnp.where(t < last, z_next, z), x, state

  z1 = _normal(keys, 0, shape) if z_init is None else jnp.asarray(z_init, jnp.float32)
  if z1.shape != (b, *shape):
    raise ValueError(f"z_init has shape {z1.shape}, expected {(b, *shape)}.")
  init = (z1, jnp.zeros_like(z1), method.init_state(z1))
  _, x, _ = jax.lax.fori_loop(0, config.num_steps, body, init)
  return x
