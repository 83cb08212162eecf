"""`--mode=evaluate`: the paper's trade-off curves (FID / IS vs w, for several T) from checkpoints.

For each checkpoint, T in `evaluation.num_steps_values` and strength in the sweep of the method
`evaluation.guidance` names (w for classifier-free guidance and autoguidance, the classifier
scale s for classifier guidance), it samples class-balanced images with shared noise, compares
their features (the dataset classifier's or Inception's) with cached reference statistics, and
writes TensorBoard scalars, trade-off plots and rows of `<workdir>/eval/results.jsonl`. With
`evaluation.poll` it evaluates every new checkpoint as training writes them. The metrics per
dataset, the tags and the results format are in docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cfg_jax import (
  checkpointing,
  fileio,
  guidance,
  images,
  models,
  networks,
  sampling,
  sampling_runner,
  students,
  train_state,
  validation,
  writers,
)
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import sources
from cfg_jax.evaluation import features, plots, results


def num_steps_values(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(config.evaluation.num_steps_values) or (config.sampling.num_steps,)


class Evaluator:
  """Holds the method and its networks, the compiled samplers, the feature networks and the
  reference features of one (validated) config."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding_lib.make_mesh_from_config(config)  # fsdp as in training
    sources.check_available(config.data)
    self.net = features.feature_net(config, self.mesh)  # before any compile: missing weights
    # Inception FID beside the dataset's own classifier, when weights are available.
    self.fid_net = (
      self.net if self.net.name == "inception" else features.inception_net(config, self.mesh)
    )
    self.method = guidance.from_config(config, section="evaluation")
    self.networks, self.network_steps = networks.load(
      config, self.method, workdir=workdir, mesh=self.mesh
    )
    self.ref = features.reference_features(config, self.net, workdir)
    self.fid_ref = None
    if self.fid_net is not None and self.fid_net is not self.net:
      self.fid_ref = features.reference_features(config, self.fid_net, workdir)
    self.shape = models.image_shape(config)
    self.apply_fn = models.create_model(config).apply
    self._samplers: dict[int, Any] = {}
    self.writer = writers.create_writer(os.path.join(workdir, "eval"))

  def sampler_config(self, num_steps: int) -> sampling.SamplerConfig:
    return sampling.SamplerConfig.from_config(self.config, num_steps=num_steps)

  def sampler(self, num_steps: int) -> sampling_runner.Sampler:
    """The sampler of T = num_steps for `sampling_runner.generate` (one compile per sweep: the
    strength is traced)."""
    if num_steps not in self._samplers:
      self._samplers[num_steps] = sampling_runner.make_sampler(
        self.apply_fn,
        shape=self.shape,
        null_label=self.config.data.num_classes,
        mesh=self.mesh,
        config=self.sampler_config(num_steps),
        method=self.method,
        networks=self.networks,
      )
    return self._samplers[num_steps]

  def settings_key(self, num_steps: int) -> str:
    """The sampler and method settings of a sweep, as the JSON stored in its results rows."""
    settings = {
      **self.sampler_config(num_steps).describe(),
      **networks.describe(self.config, self.method, self.network_steps),
    }
    return json.dumps(settings, sort_keys=True)

  @property
  def features_tag(self) -> str:
    return self.method.feature_tag(self.config, self.network_steps)

  def same_features(self, row: dict[str, Any]) -> bool:
    """Whether results row `row` was measured with these feature networks: the same dataset
    network and the same Inception (its weights' digest; none without weights). A cell computed
    before `make fid-weights` has no FID and must be computed again once the weights are there."""
    fid_net = "" if self.fid_net is None else self.fid_net.cache_name
    return row.get("feature_net") == self.net.name and row.get("fid_net", "") == fid_net

  def sweep_done(self, step: int, rows: list[dict[str, Any]]) -> bool:
    """Whether `rows` (results.jsonl) hold every (T, strength) of this sweep for `step`, with
    these settings, sample count and feature networks."""
    have = {
      (r["step"], results.guidance_strength(r), r["num_samples"], r.get("sampler_settings"))
      for r in rows
      if self.same_features(r)
    }
    n = self.config.evaluation.num_samples
    return all(
      (step, float(s), n, self.settings_key(t)) in have
      for t in num_steps_values(self.config)
      for s in self.method.strengths(self.config)
    )

  def fid_columns(
    self, xq: np.ndarray, feats: np.ndarray, m: dict[str, float]
  ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(Inception features, FID_FIELDS and `fid_net`) of quantised samples xq whose
    `sample_metrics` are m with features `feats`; (None, NaNs) without Inception weights."""
    if self.fid_net is None:
      return None, {**dict.fromkeys(results.FID_FIELDS, float("nan")), "fid_net": ""}
    if self.fid_net is self.net:
      fid_feats, fid = feats, (m["fd"], m["precision"], m["recall"])
    else:
      fid_feats, _ = self.fid_net.apply(xq)
      fid = features.distribution_metrics(fid_feats, self.fid_ref, pr_k=self.config.evaluation.pr_k)
    return fid_feats, {**dict(zip(results.FID_FIELDS, fid)), "fid_net": self.fid_net.cache_name}

  def save_features(self, *, step, num_steps, w, labels, feats, fid_feats, logits=None) -> None:
    """The cell's sample features (evaluation.save_features), e.g. for a bootstrap of FID, and
    the feature network's logits where it has them (what a grown cell's IS needs)."""
    arrays = {"labels": labels, "features": feats}
    if fid_feats is not None:
      arrays["inception"] = fid_feats
    if logits is not None:
      arrays["logits"] = logits
    path = self.features_file(step=step, num_steps=num_steps, w=w)
    if jax.process_index() == 0:
      fileio.write_atomic(path, lambda f: np.savez(f, **arrays))

  def cell_done(self, row: dict[str, Any], step: int, num_steps: int) -> bool:
    """Whether results row `row` is the (step, T) cell of this sweep (settings, sample count and
    feature networks), with its features on disk when evaluation.save_features asks for them."""
    if (row["step"], row.get("sampler_settings")) != (step, self.settings_key(num_steps)):
      return False
    if row["num_samples"] != self.config.evaluation.num_samples or not self.same_features(row):
      return False
    return not self.config.evaluation.save_features or os.path.exists(
      self.features_file(step=step, num_steps=num_steps, w=results.guidance_strength(row))
    )

  def features_file(self, *, step: int, num_steps: int, w: float) -> str:
    return results.features_path(
      self.workdir,
      step=step,
      num_steps=num_steps,
      guidance=self.features_tag,
      w=w,
      num_samples=self.config.evaluation.num_samples,
    )

  def evaluate_step(self, step: int | None) -> list[dict[str, Any]]:
    """Runs the whole (T, strength) sweep on checkpoint `step` (None: the newest intact one);
    returns its rows. Each cell's row is appended to results.jsonl as soon as it is done, and a
    cell already there (same settings and sample count) is not sampled again: an interrupted
    sweep resumes where it stopped."""
    c, ev, method = self.config, self.config.evaluation, self.method
    params, step = train_state.restore_params(
      c,
      self.workdir,
      self.mesh,
      step=step,
      use_ema=True,
      setting="evaluation.checkpoint_step",
      gather=True,
    )
    labels = np.resize(np.arange(c.data.num_classes, dtype=np.int32), ev.num_samples)
    rng = jax.random.fold_in(jax.random.key(c.seed), 3)
    prefix_of = lambda t: "/".join(p for p in ("eval", method.tag, f"T{t}") if p)
    name, rows = method.symbol, []
    for t in num_steps_values(c):
      t_rows, grids, prefix = [], {}, prefix_of(t)
      done = {
        results.guidance_strength(r): r
        for r in results.load_results(self.workdir)
        if self.cell_done(r, step, t)
      }
      for w in method.strengths(c):
        if float(w) in done:
          t_rows.append(done[float(w)])
          logging.info(
            "eval (%s) step %d T=%d %s=%g: in results.jsonl", method.name, step, t, name, w
          )
          continue
        start = time.time()
        x = sampling_runner.generate(
          self.sampler(t),
          params,
          rng,
          labels=labels,
          w=float(w),
          batch_size=ev.batch_size,
          mesh=self.mesh,
        )
        xq = features.quantize(x)
        feats, logits = self.net.apply(xq)
        m = features.sample_metrics(feats, logits, labels, self.net, self.ref, pr_k=ev.pr_k)
        fid_feats, fid = self.fid_columns(xq, feats, m)
        if ev.save_features:
          self.save_features(
            step=int(step),
            num_steps=int(t),
            w=float(w),
            labels=labels,
            feats=feats,
            fid_feats=fid_feats,
            logits=logits,
          )
        row = {
          "step": int(step),
          "guidance": method.name,
          "num_steps": int(t),
          method.strength_field: float(w),
          "num_samples": int(ev.num_samples),
          "sampler": c.sampling.sampler,
          "feature_net": self.net.name,
          **m,
          **fid,
          "seconds": time.time() - start,
          "sampler_settings": self.settings_key(t),
        }
        results.append_results(self.workdir, [row])  # on disk before the next cell starts
        t_rows.append(row)
        shown = [
          k
          for k in results.SCALAR_FIELDS
          if self.fid_net is not None or k not in results.FID_FIELDS
        ]
        logging.info(
          "eval (%s) step %d T=%d %s=%g: %s",
          method.name,
          step,
          t,
          name,
          w,
          ", ".join(f"{k}={row[k]:.4g}" for k in shown),
        )
        per_class = min(10, ev.num_samples // min(10, c.data.num_classes))
        first = np.concatenate(
          [np.flatnonzero(labels == k)[:per_class] for k in range(min(10, c.data.num_classes))]
        )
        grids[f"{prefix}/samples/{name}={w:g}"] = images.make_grid(x[first], ncols=per_class)[None]
      scalars = {
        f"{prefix}/{k}/{name}={results.guidance_strength(r):g}": r[k]
        for r in t_rows
        for k in results.SCALAR_FIELDS
        if np.isfinite(r[k])
      }
      self.writer.write_scalars(step, scalars)
      title = f"step {step}, T={t}: FD vs IS {method.sweep_title}"
      plot = plots.tradeoff_plot(t_rows, title=title, label=name)
      self.writer.write_images(step, {f"{prefix}/tradeoff": plot[None], **grids})
      if jax.process_index() == 0:
        path = os.path.join(self.workdir, "eval", f"{method.plot_stem}_step{step}_T{t}.png")
        images.save_png(plot, path)
      rows += t_rows
    self.writer.flush()
    return rows


def evaluate_steps(evaluator: Evaluator, steps: list[int]) -> list[dict[str, Any]]:
  """Evaluates each step; one deleted (e.g. by max_to_keep) or unreadable meanwhile is skipped
  with a warning instead of stopping the job."""
  rows = []
  for s in steps:
    try:
      rows += evaluator.evaluate_step(s)
    except (checkpointing.CheckpointError, FileNotFoundError) as e:
      logging.warning("checkpoint %d vanished or is unreadable, skipped: %s", s, e)
  return rows


def poll(evaluator: Evaluator) -> list[dict[str, Any]]:
  """Evaluates every checkpoint not yet in results.jsonl, as training writes them, until the
  final step is done or none arrives for evaluation.poll_timeout_secs."""
  config, workdir, ev = evaluator.config, evaluator.workdir, evaluator.config.evaluation
  final, rows, last_new = config.training.num_train_steps, [], time.time()
  while True:
    steps, have = checkpointing.list_steps(workdir), results.load_results(workdir)
    done = {s for s in steps if evaluator.sweep_done(s, have)}
    todo = [s for s in steps if s not in done]
    rows += evaluate_steps(evaluator, todo)
    if todo:
      last_new = time.time()
      have = results.load_results(workdir)
      done |= {s for s in todo if evaluator.sweep_done(s, have)}
    if any(s >= final for s in done):
      logging.info("evaluated the final checkpoint (step %d); done.", final)
      return rows
    if time.time() - last_new > ev.poll_timeout_secs:
      logging.info("no new checkpoint for %d s; stopping.", ev.poll_timeout_secs)
      return rows
    time.sleep(ev.poll_interval_secs)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Evaluates the chosen checkpoint once, or (evaluation.poll) every new checkpoint (of the
  distilled student distill.student, when set, in its own directory)."""
  validation.validate(config, workdir=workdir)
  config, workdir = students.resolve(config, workdir)
  ev = config.evaluation
  if not ev.poll:  # before any reference statistics or compile: is there anything to evaluate?
    train_state.check_checkpoint(
      workdir,
      step=None if ev.checkpoint_step < 0 else ev.checkpoint_step,
      setting="evaluation.checkpoint_step",
    )
  evaluator = Evaluator(config, workdir)
  if ev.poll:
    rows = poll(evaluator)
  else:
    rows = evaluator.evaluate_step(None if ev.checkpoint_step < 0 else ev.checkpoint_step)
  logging.info(
    "Done: %d rows (steps %s) in %s and results.csv; plots and TensorBoard events in %s.",
    len(rows),
    ", ".join(str(s) for s in sorted({r["step"] for r in rows})) or "none",
    results.results_path(workdir),
    os.path.dirname(results.results_path(workdir)),
  )
  return rows
