"""Independent-condition guidance, ICG (Sadat et al. 2024, arXiv 2407.02687): guide against a
random condition instead of ∅, so a model trained without label dropout can be guided.

ε̃ = (1 + w) ε(z, c) − w ε(z, c̃) with c̃ drawn uniformly from the classes, independently of z and
c, per sample and network evaluation (from the sample's own key: the draws do not depend on the
batch layout); one forward call on [z, z] with labels [c, c̃]. `icg.condition = null` uses ∅ as
c̃, which is plain classifier-free guidance. Defined for every sampler.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cfg_jax.guidance import core

CONDITIONS = ("random", "null")
_KEY_TAG = 0x1C6  # folded into each sample's key before the step: c̃ has draws of its own


def random_conditions(keys: jax.Array, step: jax.Array | int, num_classes: int) -> jax.Array:
  """c̃ [B] uniform on [0, num_classes), one per sample key, for sampler step `step`."""
  draw = lambda k: jax.random.randint(
    jax.random.fold_in(jax.random.fold_in(k, _KEY_TAG), step), (), 0, num_classes
  )
  return jax.vmap(draw)(keys).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ICG(core.Method):
  """Field: icg.condition ('random': c̃ uniform over the classes; 'null': c̃ = ∅, plain CFG)."""

  name = "icg"
  summary = "independent-condition guidance: a random condition in place of the null label"
  tag = "icg"
  plot_stem = "tradeoff_icg"
  file_prefix = "icg_"
  sweep_title = "ICG, over w"
  settings_name = "icg"

  condition: str = "random"

  def __post_init__(self):
    if self.condition not in CONDITIONS:
      raise ValueError(f"icg.condition must be one of {CONDITIONS}, got {self.condition!r}.")

  @classmethod
  def from_config(cls, config) -> ICG:
    return cls(condition=config.icg.condition)

  @classmethod
  def config_errors(cls, config) -> list[str]:
    c = config.icg.condition
    if c in CONDITIONS:
      return []
    return [f"icg.condition must be 'random' (a random class per sample) or 'null', got {c!r}."]

  def describe(self, config, info):
    del config, info
    return {"condition": self.condition}

  def guided(self, eps_fn, aux, step, state):
    del aux
    if self.condition == "null":
      other = jnp.full_like(step.labels, step.null_label)
    else:  # ∅ is the class id num_classes: the classes are [0, null_label)
      if step.keys is None:
        raise ValueError("ICG with a random condition needs one key per sample (Step.keys).")
      other = random_conditions(step.keys, step.step, step.null_label).astype(step.labels.dtype)
    eps_c, eps_o = core.paired_forward(
      eps_fn, z=step.z, logsnr=step.logsnr, labels=step.labels, other=other
    )
    return core.Prediction(
      core.guided_eps(eps_cond=eps_c, eps_uncond=eps_o, w=step.w), eps_c
    ), state
