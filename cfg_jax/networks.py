"""The extra networks a guidance method samples with, restored from checkpoints.

A method names them (`guidance.NetworkSpec`): an autoguidance guide (a diffusion model of
--mode=train, with its own config) or the noisy classifier of --mode=train_classifier. `errors`
checks that each is there, cheaply and before anything compiles; `load` restores them as
`sampling_runner.Network`s, params replicated, with the step each came from.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from cfg_jax import checkpointing, config_lib, guidance, models, sampling_runner, train_state
from cfg_jax.guidance import NetworkSpec
from cfg_jax.sampling_runner import Network

KINDS = ("model", "classifier")
SAME_DATA = ("name", "image_size", "num_classes")


def model_config(config: ml_collections.ConfigDict, spec: NetworkSpec) -> ml_collections.ConfigDict:
  """The config of a 'model' network: its file ('path' or 'path:arg', the dataset's fields filled
  in), or `config` itself when it names none."""
  if not spec.config:
    return config
  path, sep, arg = spec.config.partition(".py:")
  return config_lib.load_config(path + ".py" if sep else path, arg if sep else None)


def _workdir(spec: NetworkSpec, workdir: str | None) -> str | None:
  return spec.workdir or workdir


def spec_errors(
  config: ml_collections.ConfigDict, spec: NetworkSpec, *, workdir: str | None = None
) -> list[str]:
  """What keeps `spec` from loading, each naming its field and the fix: a config that does not
  load or models other data, no checkpoint, a missing step. `workdir`: the evaluated workdir,
  which a spec without one of its own means (its checkpoints are not looked at without it)."""
  f, errors = spec.fields, []
  if spec.kind == "model":
    try:
      other = model_config(config, spec)
    except (OSError, ValueError, KeyError) as e:
      other = None
      errors.append(f"{f['config']}={spec.config!r} does not load: {e}")
    if other is not None:
      for key in SAME_DATA:
        if config.data[key] != other.data[key]:
          errors.append(
            f"{f['config']} gives data.{key}={other.data[key]!r} but the main model has "
            f"{config.data[key]!r}: the {spec.name} must model the same data (same images and "
            "classes)."
          )
  where = _workdir(spec, workdir)
  if where is None:
    return errors
  if spec.kind == "classifier":
    where = train_state.classifier_dir(where)
  steps = checkpointing.list_steps(where)
  if not steps:
    how = (
      f"train the {spec.name} there first with --mode=train"
      if spec.kind == "model"
      else f"train one first with --mode=train_classifier --workdir={spec.workdir or workdir}"
    )
    what = "checkpoint" if spec.kind == "model" else f"{spec.name} checkpoint"
    src = (
      f"{f['workdir']}={spec.workdir!r}"
      if spec.workdir
      else f"the evaluated workdir {workdir!r} ({f['workdir']}='')"
    )
    errors.append(
      f"{src} holds no {what} (looked in {checkpointing.checkpoint_dir(where)}): {how}."
    )
  elif spec.step >= 0 and spec.step not in steps:
    errors.append(
      f"{f['step']}={spec.step} is not in {spec.workdir!r}, which holds steps {steps}; pick one "
      "of them or -1 (the latest)."
    )
  return errors


def _load_one(config, spec: NetworkSpec, *, workdir: str, mesh) -> tuple[Network, int]:
  step = None if spec.step < 0 else spec.step
  where = _workdir(spec, workdir)
  if spec.kind == "model":
    other = model_config(config, spec)
    params, step = train_state.restore_params(other, where, mesh, step=step, gather=True)
    return sampling_runner.model_network(models.create_model(other).apply, params), int(step)
  if spec.kind == "classifier":
    params, step = train_state.restore_classifier_params(config, where, mesh, step=step)
    apply = models.create_classifier(config).apply
    return sampling_runner.classifier_network(apply, params), int(step)
  raise ValueError(f"unknown network kind {spec.kind!r}; valid: {KINDS}.")


def load(
  config: ml_collections.ConfigDict, method: guidance.Method, *, workdir: str, mesh
) -> tuple[dict[str, Network], dict[str, int]]:
  """({name: Network}, {name: the step restored}) of every network of `method`."""
  nets, steps = {}, {}
  for spec in method.networks(config):
    nets[spec.name], steps[spec.name] = _load_one(config, spec, workdir=workdir, mesh=mesh)
  return nets, steps


def describe(config, method: guidance.Method, steps: dict[str, int]) -> dict[str, Any]:
  """The settings a results row stores for `method` (under its settings_name), or {}."""
  settings = method.describe(config, steps)
  return {method.settings_name: settings} if settings else {}
