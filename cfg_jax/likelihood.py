"""log p(x) under the probability-flow ODE of any ε-function (a continuous normalizing flow), the VDM
ELBO beside it, bits/dim of discrete images, and the deterministic encoder / decoder x ↔ z_{λ_min}.

Pure math on one example at a time (vmapped over the batch), so each example's solve, probes and
dequantization noise do not depend on the batch or the devices. The ODE, its divergence, the
solvers and the bits/dim convention are derived in docs/likelihood.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import guidance, ode, sampling, schedules
from cfg_jax.guidance import EpsFn

SOLVERS = ("dopri5", "heun")
DIVERGENCES = ("exact", "hutchinson")
NUM_LEVELS = 256  # images are stored as uint8: x = k / 127.5 − 1, k ∈ 0..255


@dataclasses.dataclass(frozen=True)
class LikelihoodConfig:
  """Static settings of the likelihood ODE (changing them recompiles); the `likelihood` section."""

  solver: str = "dopri5"  # dopri5 (adaptive, error-controlled) | heun (fixed grid, cross-check)
  rtol: float = 1e-5
  atol: float = 1e-5
  max_steps: int = 500  # dopri5: a solve that needs more is reported as not converged
  num_steps: int = 128  # heun: grid points (2T − 1 ε̃ evaluations)
  divergence: str = "hutchinson"  # exact (one JVP per dimension) | hutchinson
  num_probes: int = 1  # hutchinson: K Rademacher probes
  elbo_num_logsnrs: int = 32  # stratified λ per example of the ELBO's Monte Carlo estimate
  logsnr_min: float = schedules.LOGSNR_MIN
  logsnr_max: float = schedules.LOGSNR_MAX

  @classmethod
  def from_config(cls, config) -> LikelihoodConfig:
    """From a cfg_jax config's `likelihood` and `diffusion` sections."""
    s = config.likelihood
    return cls(
      solver=s.solver,
      rtol=s.rtol,
      atol=s.atol,
      max_steps=s.max_steps,
      num_steps=s.num_steps,
      divergence=s.divergence,
      num_probes=s.num_probes,
      elbo_num_logsnrs=s.elbo_num_logsnrs,
      logsnr_min=config.diffusion.logsnr_min,
      logsnr_max=config.diffusion.logsnr_max,
    )

  def __post_init__(self):
    schedules.check_logsnr_range(self.logsnr_min, self.logsnr_max)
    if self.solver not in SOLVERS:
      raise ValueError(f"likelihood.solver must be one of {SOLVERS}, got {self.solver!r}.")
    if self.divergence not in DIVERGENCES:
      raise ValueError(
        f"likelihood.divergence must be one of {DIVERGENCES}, got {self.divergence!r}."
      )
    if not (self.rtol > 0 and self.atol > 0):
      raise ValueError(
        f"likelihood.rtol and likelihood.atol must be > 0 (score_sde: 1e-5), got "
        f"{self.rtol}, {self.atol}."
      )
    for field, low in (("max_steps", 1), ("num_steps", 2), ("num_probes", 1)):
      if getattr(self, field) < low:
        raise ValueError(f"likelihood.{field} must be >= {low}, got {getattr(self, field)}.")
    if self.elbo_num_logsnrs < 0:
      raise ValueError(
        f"likelihood.elbo_num_logsnrs must be >= 0 (0 = no ELBO), got {self.elbo_num_logsnrs}."
      )

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable settings for results files."""
    return {k: (v if isinstance(v, str) else float(v)) for k, v in dataclasses.asdict(self).items()}


# --- the ODE ----------------------------------------------------------------------------------

# One example: (z [*shape], λ scalar) -> ε̃ [*shape]
SingleEpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def config_errors(config) -> list[str]:
  """The rules of the `likelihood` section (collected by `validation.validate`), each naming the
  field and the fix."""
  s, errors = config.likelihood, []
  try:
    guidance.check_w(s.w_values, field="likelihood.w_values")
  except ValueError as e:
    errors.append(str(e))
  if s.batch_size < 1 or s.num_examples == 0 or s.num_examples < -1:
    errors.append(
      f"likelihood.batch_size ({s.batch_size}) must be >= 1 and likelihood.num_examples "
      f"({s.num_examples}) >= 1 or -1 (the whole split)."
    )
  try:
    LikelihoodConfig.from_config(config)
  except ValueError as e:
    errors.append(str(e))
  return errors


def guided_single(eps_fn: EpsFn, *, label: jax.Array, w: jax.Array, null_label: int):
  """ε̃(z, λ) = (1 + w) ε(z, c) − w ε(z, ∅) of one example, from ONE forward call on [z, z]
  (`guidance.CFG`; raw: no thresholding, which would break the flow's invertibility); w = −1
  gives ε(z, ∅)."""

  def f(z, logsnr):
    step = guidance.Step(
      z=z[None],
      logsnr=jnp.full((1,), logsnr, jnp.float32),
      labels=label[None],
      w=w,
      null_label=null_label,
    )
    pred, _ = guidance.CFG.guided(eps_fn, {}, step, ())
    return pred.eps[0]

  return f


def drift(eps: jax.Array, *, z: jax.Array, logsnr: jax.Array) -> jax.Array:
  """dz/dλ = ½ (σ² z − σ ε̃): the probability-flow ODE in λ (docs/likelihood.md)."""
  sigma = jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))
  return 0.5 * (jnp.square(sigma) * z - sigma * eps)


def probes(rng: jax.Array, *, shape: tuple[int, ...], config: LikelihoodConfig) -> jax.Array:
  """Directions v of the divergence, [K, *shape]: the standard basis (exact, K = dimension) or
  K Rademacher vectors (Hutchinson); div ≈ mean_k vₖ·(∂ε̃/∂z) vₖ per probe."""
  dim = math.prod(shape)
  if config.divergence == "exact":
    return jnp.eye(dim, dtype=jnp.float32).reshape(dim, *shape)
  signs = jax.random.rademacher(rng, (config.num_probes, *shape))
  return signs.astype(jnp.float32)


def eps_and_divergence(
  f: SingleEpsFn, *, z: jax.Array, logsnr: jax.Array, vs: jax.Array, exact: bool
) -> tuple[jax.Array, jax.Array]:
  """(ε̃ [*shape], div): per-probe vᵀ(∂ε̃/∂z)v [K], one JVP per probe, vmapped; exact: their sum
  over the basis, [1]."""
  eps, jv = jax.vmap(lambda v: jax.jvp(lambda z: f(z, logsnr), (z,), (v,)), out_axes=(None, 0))(vs)
  per_probe = jnp.sum((jv * vs).reshape(vs.shape[0], -1), axis=1)
  if exact:
    return eps, jnp.sum(per_probe)[None]
  return eps, per_probe


def _augmented(f: SingleEpsFn, vs: jax.Array, exact: bool):
  """(z, Δ[K]) ↦ (dz/dλ, dΔ/dλ = −½ σ div ε̃): integrated from λ_max down to λ_min, Δ gathers
  ∫_{λ_min}^{λ_max} ½ σ div ε̃ dλ."""

  def g(state, logsnr):
    z, _ = state
    eps, div = eps_and_divergence(f, z=z, logsnr=logsnr, vs=vs, exact=exact)
    sigma = jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))
    return drift(eps, z=z, logsnr=logsnr), -0.5 * sigma * div

  return g


def _plain(f: SingleEpsFn):
  return lambda z, logsnr: drift(f(z, logsnr), z=z, logsnr=logsnr)


def _heun_grid(config: LikelihoodConfig, *, descending: bool) -> jax.Array:
  grid = schedules.sampling_logsnrs(
    config.num_steps, logsnr_min=config.logsnr_min, logsnr_max=config.logsnr_max
  )
  return grid[::-1] if descending else grid


def heun_flow(
  f: SingleEpsFn, vs: jax.Array | None, z: jax.Array, *, grid: jax.Array, exact: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The fixed-grid cross-check: z moves by `sampling.heun_step` (Heun in y = z/σ over
  ρ = α/σ, any direction of λ), Δ by the trapezoid rule in λ on ½ σ div ε̃ at the same two
  evaluations. Returns (z at grid[-1], Δ [K] (zeros when vs is None), evaluations)."""

  def evaluate(z, logsnr):
    if vs is None:
      eps, div = f(z, logsnr), jnp.zeros((1,), jnp.float32)
    else:
      eps, div = eps_and_divergence(f, z=z, logsnr=logsnr, vs=vs, exact=exact)
    alpha, sigma = schedules.alpha_sigma(logsnr)
    return (z - sigma * eps) / alpha, 0.5 * sigma * div  # x̃, ½ σ div ε̃

  def body(i, carry):
    z, delta = carry
    lam, lam_next = grid[i], grid[i + 1]
    x, d = evaluate(z, lam)
    z_euler = sampling.euler_step(z=z, x=x, logsnr=lam, logsnr_next=lam_next)
    x_next, d_next = evaluate(z_euler, lam_next)
    z_next = sampling.euler_step(z=z, x=0.5 * (x + x_next), logsnr=lam, logsnr_next=lam_next)
    return z_next, delta + 0.5 * (lam - lam_next) * (d + d_next)

  k = 1 if (vs is None or exact) else vs.shape[0]
  z, delta = jax.lax.fori_loop(0, grid.shape[0] - 1, body, (z, jnp.zeros((k,), jnp.float32)))
  return z, delta, jnp.int32(2 * (grid.shape[0] - 1))


# --- log p(x), encode / decode ------------------------------------------------------------------


def prior_logp(z: jax.Array, *, logsnr_min: float) -> jax.Array:
  """log N(z; 0, σ²_{λ_min} I) of one example."""
  var = jax.nn.sigmoid(-jnp.float32(logsnr_min))
  return -0.5 * (jnp.sum(jnp.square(z)) / var + z.size * jnp.log(2 * jnp.pi * var))


def log_alpha_ratio(*, logsnr_min: float, logsnr_max: float) -> float:
  """log(α_{λ_min}/α_{λ_max}) per dimension: the exact ∫ of the drift's ½σ² z part."""
  log_sigmoid = lambda v: -float(np.logaddexp(0.0, -v))
  return 0.5 * (log_sigmoid(logsnr_min) - log_sigmoid(logsnr_max))


def log_likelihood(
  f: SingleEpsFn, *, x: jax.Array, rng: jax.Array, config: LikelihoodConfig
) -> dict[str, jax.Array]:
  """log p(x) of one example x [*shape] (taken as z at λ_max) under the ODE of ε̃ = f:
  log N(z_{λ_min}; 0, σ²_{λ_min} I) + D log(α_{λ_min}/α_{λ_max}) + ∫ ½ σ div ε̃ dλ.

  Returns {'logp': mean over probes, 'logp_se': the probes' standard error (0 when exact or
  K = 1), 'nfe': ε̃ evaluations, 'converged', 'z': z at λ_min}.
  """
  exact = config.divergence == "exact"
  vs = probes(rng, shape=x.shape, config=config)
  delta0 = jnp.zeros((1 if exact else vs.shape[0],), jnp.float32)
  if config.solver == "dopri5":
    (z, delta), nfe, ok = ode.dopri5(
      _augmented(f, vs, exact),
      (x, delta0),
      start=config.logsnr_max,
      stop=config.logsnr_min,
      rtol=config.rtol,
      atol=config.atol,
      max_steps=config.max_steps,
    )
  else:
    z, delta, nfe = heun_flow(f, vs, x, grid=_heun_grid(config, descending=True), exact=exact)
    ok = jnp.bool_(True)
  const = prior_logp(z, logsnr_min=config.logsnr_min) + x.size * log_alpha_ratio(
    logsnr_min=config.logsnr_min, logsnr_max=config.logsnr_max
  )
  per_probe = const + delta
  k = per_probe.shape[0]
  se = jnp.std(per_probe, ddof=1) / math.sqrt(k) if (k > 1 and not exact) else jnp.float32(0)
  return {"logp": jnp.mean(per_probe), "logp_se": se, "nfe": nfe, "converged": ok, "z": z}


def transport(f: SingleEpsFn, y: jax.Array, *, encode: bool, config: LikelihoodConfig):
  """The ODE alone, x at λ_max → z at λ_min (encode) or back (decode); returns (y', nfe)."""
  lo, hi = config.logsnr_min, config.logsnr_max
  start, stop = (hi, lo) if encode else (lo, hi)
  if config.solver == "dopri5":
    tol = dict(rtol=config.rtol, atol=config.atol, max_steps=config.max_steps)
    out, nfe, _ = ode.dopri5(_plain(f), y, start=start, stop=stop, **tol)
    return out, nfe
  z, _, nfe = heun_flow(f, None, y, grid=_heun_grid(config, descending=encode), exact=False)
  return z, nfe


def _batched(fn, eps_fn: EpsFn, *, null_label: int):
  """vmaps fn(f_single, *per_example) over (labels [B], w [B], *per_example [B, ...])."""

  def run(labels, w, *args):
    def one(label, wi, *a):
      return fn(guided_single(eps_fn, label=label, w=wi, null_label=null_label), *a)

    return jax.vmap(one)(labels, jnp.broadcast_to(jnp.asarray(w, jnp.float32), labels.shape), *args)

  return run


def encode(eps_fn, x, *, labels, w, null_label, config: LikelihoodConfig) -> jax.Array:
  """x [B, ...] at λ_max → z [B, ...] at λ_min along the ODE of ε̃ (w scalar or [B])."""
  one = lambda f, y: transport(f, y, encode=True, config=config)[0]
  return _batched(one, eps_fn, null_label=null_label)(labels, w, x)


def decode(eps_fn, z, *, labels, w, null_label, config: LikelihoodConfig) -> jax.Array:
  """z [B, ...] at λ_min → x [B, ...] at λ_max: the inverse of `encode`."""
  one = lambda f, y: transport(f, y, encode=False, config=config)[0]
  return _batched(one, eps_fn, null_label=null_label)(labels, w, z)


def slerp(z0: jax.Array, z1: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation between z0 and z1 (same shape) at fractions t [N] → [N, ...]."""
  a, b = z0.ravel(), z1.ravel()
  omega = jnp.arccos(jnp.clip(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)), -1, 1))
  t = jnp.asarray(t, jnp.float32)[:, None]
  out = (jnp.sin((1 - t) * omega) * a + jnp.sin(t * omega) * b) / jnp.sin(omega)
  return out.reshape(t.shape[0], *z0.shape)


# --- ELBO and bits/dim ----------------------------------------------------------------------------


def elbo(f: SingleEpsFn, *, x: jax.Array, rng: jax.Array, config: LikelihoodConfig) -> jax.Array:
  """VDM's continuous-time bound on −log p(x) (nats) of one example, for ε̃ = f:
  ½ e^{λ_min} |x|² (prior KL) + (D/2)(log 2π − λ_max + 1) (Gaussian decoder at λ_max)
  + ½ ∫_{λ_min}^{λ_max} E‖ε − ε̃(z_λ)‖² dλ, the last by K stratified λ (VDM's u-form with its
  weight −dλ/du, changed to the variable λ) and one ε each, with ‖ε‖² replaced by its mean D
  (an exact control variate: unbiased, and far less noisy where ε̃ is small)."""
  k, lo, hi = config.elbo_num_logsnrs, config.logsnr_min, config.logsnr_max
  k_u, k_e = jax.random.split(rng)
  lam = lo + (jnp.arange(k) + jax.random.uniform(k_u)) * (hi - lo) / k
  eps = jax.random.normal(k_e, (k, *x.shape))

  def sq_err(logsnr, e):
    alpha, sigma = schedules.alpha_sigma(logsnr)
    eps_hat = f(alpha * x + sigma * e, logsnr)
    return e.size + jnp.sum(jnp.square(eps_hat) - 2.0 * e * eps_hat)

  diffusion = 0.5 * (hi - lo) * jnp.mean(jax.lax.map(lambda a: sq_err(*a), (lam, eps)))
  prior = 0.5 * math.exp(lo) * jnp.sum(jnp.square(x))
  recon = 0.5 * x.size * (math.log(2 * math.pi) - hi + 1.0)
  return prior + recon + diffusion


def dequantize(rng: jax.Array, x: jax.Array) -> jax.Array:
  """Uniform dequantization of x = k/127.5 − 1: y = x + (u − ½)/127.5, u ~ U[0, 1)^D."""
  return x + (jax.random.uniform(rng, x.shape) - 0.5) / (0.5 * (NUM_LEVELS - 1))


def bits_per_dim(nll_nats: jax.Array, *, dim: int) -> jax.Array:
  """Bits/dim of the discrete image from the dequantized density's NLL: (nll/D + log 127.5)/ln 2
  (the bin of width 1/127.5 in [−1, 1] scale; score_sde's offset of 7 bits for width 1/128)."""
  return (nll_nats / dim + math.log(0.5 * (NUM_LEVELS - 1))) / math.log(2.0)


def image_nll(
  eps_fn: EpsFn,
  *,
  rng: jax.Array,
  ids: jax.Array,
  x: jax.Array,
  labels: jax.Array,
  w: jax.Array,
  null_label: int,
  config: LikelihoodConfig,
) -> dict[str, jax.Array]:
  """Per image of a batch x [B, H, W, C] in [−1, 1]: bits/dim under the ODE ('bpd', its
  Hutchinson standard error 'bpd_se') and the ELBO ('elbo_bpd'), 'nfe', 'converged'. Image i's
  dequantization noise, probes and ELBO draws come from (rng, ids[i]) alone."""
  dim = math.prod(x.shape[1:])
  keys = sampling.per_sample_keys(rng, ids)

  def one(f, key, xi):
    k_deq, k_probe, k_elbo = jax.random.split(key, 3)
    y = dequantize(k_deq, xi)
    out = log_likelihood(f, x=y, rng=k_probe, config=config)
    res = {
      "bpd": bits_per_dim(-out["logp"], dim=dim),
      "bpd_se": out["logp_se"] / (dim * math.log(2.0)),
      "nfe": out["nfe"],
      "converged": out["converged"],
    }
    if config.elbo_num_logsnrs:
      res["elbo_bpd"] = bits_per_dim(elbo(f, x=y, rng=k_elbo, config=config), dim=dim)
    return res

  return _batched(one, eps_fn, null_label=null_label)(labels, w, keys, x)


def summarize(values: np.ndarray, se: np.ndarray) -> tuple[float, float]:
  """(mean, standard error of the mean) of per-example estimates with per-example probe SEs:
  the data's spread and the probes' noise together (the sample std covers both)."""
  values = np.asarray(values, np.float64)
  n = values.shape[0]
  spread = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
  probe = float(np.sqrt(np.sum(np.square(se))) / n)
  return float(np.mean(values)), max(spread, probe)
