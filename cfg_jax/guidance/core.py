"""The interface every guidance method implements, and the math they share.

A method (`Method`) is a small frozen dataclass built from the config. At each network evaluation
`sampling.denoise_step` asks it for the guided prediction of a batch, `guided(eps_fn, aux, step,
state) -> (Prediction, state)`: the guided ε̃, the conditional ε that CFG rescale aims at, and,
for methods that need them, the guided x̃ itself (APG) or the ε the DDIM step re-noises with
(CFG++); `state` is what a method carries from step to step (APG's momentum). Outside a guidance
interval, or with `SamplerConfig(guided=False)`, it asks for the unguided ε (`unguided`). `aux`
holds the functions of the extra networks a method names in `networks()` (a guide, a classifier),
which the runtime (`cfg_jax/networks.py`) restores: this package imports jax alone. Each method
also carries its strength column, its TensorBoard tag, what it adds to a results row's settings
(`describe`), the samplers it is defined for, and its config errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

# (z [B, ...], λ [B], labels [B]) -> ε [B, ...]
EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# The functions of a method's extra networks, by name (e.g. 'guide': an EpsFn).
Aux = Mapping[str, Callable[..., jax.Array]]


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """An extra network a method samples with, as the config names it (the runtime restores it).

  kind: 'model' (a diffusion model of --mode=train) or 'classifier' (--mode=train_classifier).
  workdir / step / config: where it is ('' = the evaluated workdir), its checkpoint step (−1: the
  latest) and, for a model, its config file ('' = the main config); `fields` names the config
  fields that set them, for error messages.
  """

  name: str
  kind: str
  workdir: str
  step: int = -1
  config: str = ""
  fields: Mapping[str, str] = dataclasses.field(default_factory=dict)


def check_w(w_values, *, field: str) -> None:
  """Raises ValueError unless every guidance strength in `w_values` (the config field `field`) is
  finite and >= −1."""
  for w in w_values:
    if not math.isfinite(w) or w < -1.0:
      raise ValueError(
        f"{field} holds {w}: w must be finite and >= -1 (w = 0 is the conditional "
        "model, w = -1 the unconditional one; the paper sweeps 0..4). Note: "
        "w = s - 1 for codebases that use a guidance scale s."
      )


class Step(NamedTuple):
  """What a method sees at one network evaluation of the sampler: z [B, ...] at λ [B], the
  requested labels [B], the strength w [B] (the method's own: w, a scale, ...), ∅, the sampler
  step t (0 at λ_min; Heun's second evaluation of step t is t + 1) and one key per sample for
  this evaluation (methods that draw something, e.g. ICG's random condition)."""

  z: jax.Array
  logsnr: jax.Array
  labels: jax.Array
  w: jax.Array
  null_label: int
  step: jax.Array | int = 0
  keys: jax.Array | None = None


class Prediction(NamedTuple):
  """A method's guided prediction: ε̃ [B, ...] and the conditional ε (CFG rescale's target);
  `x`, when set, is the guided x̃ itself (ε̃ is then (z − α x̃)/σ, and x̃ is used as it is);
  `eps_step`, when set, is the ε the DDIM step re-noises with instead of the one consistent with
  x̃ (CFG++)."""

  eps: jax.Array
  eps_cond: jax.Array
  x: jax.Array | None = None
  eps_step: jax.Array | None = None


def per_row(x: jax.Array | float, like: jax.Array) -> jax.Array:
  """A scalar unchanged, or a [B] array as [B, 1, ...] to broadcast over `like` [B, ...]."""
  x = jnp.asarray(x, like.dtype)
  return x.reshape(x.shape + (1,) * (like.ndim - x.ndim)) if x.ndim == 1 else x


def guided_eps(*, eps_cond: jax.Array, eps_uncond: jax.Array, w: jax.Array) -> jax.Array:
  """ε̃ = (1 + w) ε_c − w ε_∅, with w a scalar or one value per sample ([B])."""
  return eps_cond + per_row(w, eps_cond) * (eps_cond - eps_uncond)


def paired_forward(
  eps_fn: EpsFn, *, z: jax.Array, logsnr: jax.Array, labels: jax.Array, other: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(ε(z, labels), ε(z, other)) from ONE forward call on [z, z] with labels [labels, other]:
  the batched forward of classifier-free guidance (other = ∅), written once."""
  b = z.shape[0]
  eps = eps_fn(
    jnp.concatenate([z, z], axis=0),
    jnp.concatenate([logsnr, logsnr], axis=0),
    jnp.concatenate([labels, other], axis=0),
  )
  return eps[:b], eps[b:]


def digest_tag(name: str, settings: Mapping[str, Any]) -> str:
  """`name-<8 hex digits of the settings' sha256>`: a file-name tag that tells settings apart."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
  return f"{name}-{digest[:8]}"


@dataclasses.dataclass(frozen=True)
class Method:
  """A guidance method: what `sampling.denoise` calls, and how results and tags name it."""

  name: ClassVar[str]  # the registry key: the value of sampling.guidance / evaluation.guidance
  summary: ClassVar[str]  # one line for error messages and docs
  strength_field: ClassVar[str] = "w"  # the results column of the swept strength
  symbol: ClassVar[str] = "w"  # the strength in TensorBoard tags and plot labels
  tag: ClassVar[str] = ""  # TensorBoard tags: eval/<tag>/T<T>/... ('' : eval/T<T>/...)
  plot_stem: ClassVar[str] = "tradeoff"  # eval/<stem>_step<step>_T<T>.png
  file_prefix: ClassVar[str] = ""  # --mode=sample file names: <prefix>samples.npz
  sweep_title: ClassVar[str] = "over w"  # the trade-off plot's title
  settings_name: ClassVar[str] = ""  # the key of `describe()` in a results row's settings
  samplers: ClassVar[tuple[str, ...] | None] = None  # the samplers it is defined for; None: all
  predicts_x: ClassVar[bool] = False  # its Prediction may set x (the guided x̃ itself)
  own_step_eps: ClassVar[bool] = False  # its Prediction sets eps_step (CFG++'s ε_∅)

  @classmethod
  def from_config(cls, config) -> Method:
    """The method with the settings of `config` (the fields its docstring names)."""
    del config
    return cls()

  @classmethod
  def config_errors(cls, config) -> list[str]:
    """What is wrong with this method's own config fields, each naming the field and the fix."""
    del config
    return []

  @classmethod
  def strength_errors(cls, values, *, field: str) -> list[str]:
    """What is wrong with `values` as this method's strengths (the config field `field`)."""
    try:
      check_w(values, field=field)
    except ValueError as e:
      return [str(e)]
    return []

  def networks(self, config) -> tuple[NetworkSpec, ...]:
    """The extra networks it samples with (none for classifier-free guidance)."""
    del config
    return ()

  def strengths(self, config) -> tuple[float, ...]:
    """The strengths `--mode=evaluate` sweeps (w, or another scale the method defines)."""
    return tuple(config.evaluation.w_values)

  def describe(self, config, info: Mapping[str, int]) -> dict[str, Any]:
    """Its settings for a results row (under `settings_name`); `info`: the checkpoint step each
    of its networks was restored from, by name."""
    del config, info
    return {}

  def feature_tag(self, config, info: Mapping[str, int]) -> str:
    """The method in feature file names (`digest_tag` where its networks must be told apart)."""
    del config, info
    return self.name

  def init_state(self, z: jax.Array) -> Any:
    """What the method carries from step to step, at the first step (a pytree; () for none)."""
    del z
    return ()

  def unguided(self, eps_fn: EpsFn, aux: Aux, step: Step) -> jax.Array:
    """ε where the sampler does not guide: the conditional model, one forward of B."""
    del aux
    return eps_fn(step.z, step.logsnr, step.labels)

  def guided(self, eps_fn: EpsFn, aux: Aux, step: Step, state: Any) -> tuple[Prediction, Any]:
    """The guided prediction at `step`, and the state for the next step."""
    raise NotImplementedError
