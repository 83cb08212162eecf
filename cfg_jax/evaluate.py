"""`--mode=evaluate`: the paper's trade-off curves (FID / IS vs w, for several T) from checkpoints.

For each checkpoint, T in `evaluation.num_steps_values` and w in `evaluation.w_values` (or, with
`evaluation.guidance=classifier`, the classifier scale s in `evaluation.classifier_scales`; with
`evaluation.guidance=auto`, w of autoguidance by the model of `config.autoguidance`), it
samples class-balanced images with shared noise, compares their features (the digits classifier's
or Inception's) with cached reference statistics, and writes TensorBoard scalars, trade-off plots
and rows of `<workdir>/eval/results.jsonl` (w in the column `w`, s in `scale`). The metrics per
dataset, the tags and the results format are in docs/evaluation.md.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from cfg_jax import (
  autoguidance,
  checkpointing,
  config_lib,
  fileio,
  images,
  models,
  sample,
  sampling,
  sampling_runner,
  students,
  writers,
)
from cfg_jax import sharding as sharding_lib
from cfg_jax.evaluation import metrics

RESULT_FIELDS = tuple(
  "step guidance num_steps w scale num_samples sampler feature_net fd is is_std precision recall "
  "class_accuracy fid fid_precision fid_recall fid_net seconds sampler_settings".split()
)
SCALAR_FIELDS = tuple("fd is precision recall class_accuracy fid fid_precision fid_recall".split())
FID_FIELDS = ("fid", "fid_precision", "fid_recall")  # Inception FID and P/R; NaN without weights


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """Maps images [N,H,W,C] in [−1, 1] to (features [N,D], logits [N,K] or None)."""

  name: str  # 'digits_classifier_v<VERSION>' or 'inception'
  apply: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # None: no classifier
  logits_are_dataset_classes: bool  # True: argmax(logits) is a dataset label (class accuracy)
  key: str = ""  # what the features depend on beyond the name (weights digest, preprocessing)

  @property
  def cache_name(self) -> str:
    return f"{self.name}-{self.key}" if self.key else self.name


def params_digest(params: Any) -> str:
  """sha256 (hex) of a params tree: its flat names, dtypes, shapes and bytes, in name order."""
  digest = hashlib.sha256()
  for name, value in sorted(traverse_util.flatten_dict(params, sep="/").items()):
    array = np.ascontiguousarray(np.asarray(value))
    digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _batched(fn, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
  feats, logits = [], []
  for i in range(0, len(x), batch_size):
    f, l = fn(x[i : i + batch_size])
    feats.append(np.asarray(f, np.float32))
    if l is not None:
      logits.append(np.asarray(l, np.float32))
  return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def _inception_outputs(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  from cfg_jax.evaluation import inception

  out = inception.features(params, x)
  return out["pool"], out.get("logits")


def inception_net(config: ml_collections.ConfigDict, mesh=None) -> FeatureNet | None:
  """The FID Inception-v3 with the weights `evaluation.inception_weights` resolves to
  (`inception.resolve_weights_path`), or None when it resolves to none.

  Each batch is split over the `data` axis of `mesh` (default: all devices).
  """
  from cfg_jax.evaluation import inception

  path = inception.resolve_weights_path(config.evaluation.inception_weights)
  if path is None:
    return None
  params = inception.load_params(path)  # clear error if missing or wrong
  key = f"{params_digest(params)[:16]}-tf{inception.INPUT_SIZE}"  # weights, preprocessing
  apply = sharding_lib.sharded_batch_fn(
    _inception_outputs, params, mesh or sharding_lib.make_mesh()
  )
  bs = config.evaluation.batch_size
  return FeatureNet("inception", lambda x: _batched(apply, x, bs), False, key)


def feature_net(config: ml_collections.ConfigDict, mesh=None) -> FeatureNet:
  """The feature network of `config`'s dataset; raises a clear error if its weights are missing.

  Inception runs with each batch split over the `data` axis of `mesh` (default: all devices).
  """
  bs = config.evaluation.batch_size
  from cfg_jax.evaluation import digits_classifier

  if config.data.name in digits_classifier.RECIPES:
    clf = digits_classifier.load_or_train(config.data)

    def apply_clf(b):
      out = clf.outputs(b)
      return out["features"], out["logits"]

    return FeatureNet(
      digits_classifier.feature_net_name(config.data),
      lambda x: _batched(apply_clf, x, bs),
      True,
      params_digest(clf.params)[:16],
    )
  net = inception_net(config, mesh)
  if net is None:
    from cfg_jax.evaluation import inception

    path = config.evaluation.inception_weights
    if path == "none":
      raise inception.InceptionWeightsError(
        f"evaluation.inception_weights='none', but dataset {config.data.name!r} is evaluated "
        "with Inception only; give the weights' .npz or '' (the default location)."
      )
    inception.load_params(inception.default_weights_path())  # raises: says how to make them
  return net


def quantize(x: np.ndarray) -> np.ndarray:
  """Rounds samples to uint8 and back to [−1, 1], as images are stored and as evaluators see them."""
  return images.to_uint8(x).astype(np.float32) / 127.5 - 1.0


def reference_features(
  config: ml_collections.ConfigDict, net: FeatureNet, workdir: str
) -> dict[str, np.ndarray]:
  """Features of the reference split, cached in `<workdir>/eval/` (computed once per network,
  weights and preprocessing: the file is named by `net.cache_name`)."""
  from cfg_jax import data

  ev = config.evaluation
  n = ev.reference_num_examples
  name = f"reference_{net.cache_name}_{config.data.name}_{ev.reference_split}_{n}.npz"
  path = os.path.join(workdir, "eval", name)
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  x, labels = data.eval_arrays(
    config.data, split=ev.reference_split, max_examples=None if n <= 0 else n
  )
  feats, logits = net.apply(x)
  mu, sigma = metrics.feature_statistics(feats)
  ref = {"features": feats, "labels": labels, "mu": mu, "sigma": sigma}
  if logits is not None:
    ref["logits"] = logits
  if jax.process_index() == 0:
    fileio.write_atomic(path, lambda f: np.savez(f, **ref))
  return ref


def distribution_metrics(
  feats: np.ndarray, ref: dict[str, np.ndarray], *, pr_k: int = 3
) -> tuple[float, float, float]:
  """(Fréchet distance, precision, recall) of sample features against the reference."""
  mu, sigma = metrics.feature_statistics(feats)
  precision, recall = metrics.precision_recall(ref["features"], feats, k=pr_k)
  return metrics.frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), precision, recall


def sample_metrics(
  feats: np.ndarray,
  logits: np.ndarray | None,
  labels: np.ndarray,
  net: FeatureNet,
  ref: dict[str, np.ndarray],
  *,
  pr_k: int = 3,
) -> dict[str, float]:
  """FD / IS / precision / recall of sample features and logits from `net` (and class accuracy
  where the logits are dataset classes); IS and class accuracy are NaN without a classifier."""
  fd, precision, recall = distribution_metrics(feats, ref, pr_k=pr_k)
  nan = float("nan")
  is_mean, is_std = (
    (nan, nan)
    if logits is None
    else metrics.inception_score(logits, num_splits=min(10, len(feats)))
  )
  out = {"fd": fd, "is": is_mean, "is_std": is_std, "precision": precision, "recall": recall}
  out["class_accuracy"] = (
    float(np.mean(np.argmax(logits, -1) == labels))
    if net.logits_are_dataset_classes and logits is not None
    else nan
  )
  return out


def features_path(
  workdir: str, *, step: int, num_steps: int, guidance: str, w: float, num_samples: int
) -> str:
  """Where `evaluation.save_features` puts the features of one (step, T, w) cell."""
  return os.path.join(
    workdir, "eval", "features", f"step{step}_T{num_steps}_{guidance}_w{w:g}_n{num_samples}.npz"
  )


def tradeoff_plot(rows: list[dict[str, Any]], *, title: str, label: str = "w") -> np.ndarray:
  """FD-vs-IS curve over w (or `label`) as an RGB uint8 image (one point per value, annotated);
  FD against w itself when IS is not available (Inception weights without the classifier)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(4.5, 3.5), dpi=100)  # no pyplot: leaves the caller's backend alone
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  fd = [r["fd"] for r in rows]
  has_is = all(np.isfinite(r["is"]) for r in rows)
  score = [r["is"] if has_is else guidance_strength(r) for r in rows]
  ax.plot(score, fd, "o-")
  for r, xpos in zip(rows, score):
    ax.annotate(
      f"{label}={guidance_strength(r):g}",
      (xpos, r["fd"]),
      textcoords="offset points",
      xytext=(4, 4),
      fontsize=7,
    )
  if not has_is:
    ax.set_xlabel(label)
  else:
    ax.set_xlabel(
      "IS" if rows and rows[0]["feature_net"] == "inception" else "IS (digits classifier)"
    )
  ax.set_ylabel(
    "FID" if rows and rows[0]["feature_net"] == "inception" else "FD (digits classifier)"
  )
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  from PIL import Image

  buf.seek(0)
  return np.asarray(Image.open(buf).convert("RGB"))


def results_path(workdir: str) -> str:
  return os.path.join(workdir, "eval", "results.jsonl")


def strength_field(guidance: str) -> str:
  """The results column of a sweep's guidance strength: `w` for classifier-free guidance,
  `scale` for the classifier scale s of classifier guidance."""
  return "scale" if guidance == "classifier" else "w"


def guidance_strength(row: dict[str, Any]) -> float:
  """w or s of a results row, whichever its guidance sweeps."""
  return row[strength_field(row["guidance"])]


def _upgrade_row(row: dict[str, Any]) -> dict[str, Any]:
  """Reads rows of older results files: before `scale` existed, classifier rows kept s in `w`;
  before classifier guidance, rows had no `guidance` (all were classifier-free)."""
  row.setdefault("guidance", "cfg")
  if row["guidance"] == "classifier" and "scale" not in row:
    row["scale"] = row.pop("w")
  return row


def load_results(workdir: str) -> list[dict[str, Any]]:
  path = results_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [_upgrade_row(json.loads(line)) for line in f if line.strip()]


def append_results(workdir: str, rows: list[dict[str, Any]]) -> None:
  """Appends rows to results.jsonl and rewrites results.csv from all rows (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  with open(results_path(workdir), "a") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  with open(os.path.join(workdir, "eval", "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
    w.writeheader()
    for r in load_results(workdir):
      w.writerow({k: r.get(k) for k in RESULT_FIELDS})


def guidance_values(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The swept guidance strengths: w (classifier-free) or the classifier scale s."""
  ev = config.evaluation
  return tuple(ev.classifier_scales if ev.guidance == "classifier" else ev.w_values)


def sampler_config(config: ml_collections.ConfigDict, num_steps: int) -> sampling.SamplerConfig:
  """The sampler of one sweep; classifier guidance runs the conditional half only."""
  scfg = sampling.SamplerConfig.from_config(config, num_steps=num_steps)
  if config.evaluation.guidance == "classifier":
    scfg = dataclasses.replace(scfg, guided=False)
  return scfg


def settings_key(
  config: ml_collections.ConfigDict, num_steps: int, *, guide_step: int | None = None
) -> str:
  """The sampler and guidance settings of one sweep, as the JSON stored in results rows
  (`guide_step`: the autoguidance guide's resolved checkpoint step)."""
  ev = config.evaluation
  settings = sampler_config(config, num_steps).describe()
  if ev.guidance == "auto":
    settings["autoguidance"] = autoguidance.describe(config, step=guide_step)
  if ev.guidance == "classifier":
    settings["classifier_guidance"] = {
      "model_labels": ev.classifier_model_labels,
      "classifier_workdir": ev.classifier_workdir or "<workdir>",
    }
  return json.dumps(settings, sort_keys=True)


def tag_prefix(config: ml_collections.ConfigDict, num_steps: int) -> tuple[str, str]:
  """TensorBoard tag prefix and the name of the swept value ('w' or 's') of a sweep."""
  if config.evaluation.guidance == "classifier":
    return f"eval/classifier_guidance/T{num_steps}", "s"
  if config.evaluation.guidance == "auto":
    return f"eval/autoguidance/T{num_steps}", "w"
  return f"eval/T{num_steps}", "w"


def sweep_done(
  workdir: str, step: int, config: ml_collections.ConfigDict, *, guide_step: int | None = None
) -> bool:
  """Whether results.jsonl already holds every (T, w) of this sweep, with these sampler
  settings (and autoguidance guide step) and sample count, for `step`."""
  have = {
    (r["step"], guidance_strength(r), r["num_samples"], r.get("sampler_settings"))
    for r in load_results(workdir)
  }
  ev = config.evaluation
  return all(
    (step, float(w), ev.num_samples, settings_key(config, t, guide_step=guide_step)) in have
    for t in num_steps_values(config)
    for w in guidance_values(config)
  )


def num_steps_values(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return tuple(config.evaluation.num_steps_values) or (config.sampling.num_steps,)


def load_guidance_classifier(
  config: ml_collections.ConfigDict, workdir: str, mesh
) -> tuple[Callable[..., Any], Any]:
  """(apply, params) of the latest classifier in `<classifier_workdir or workdir>/classifier`;
  a clear CheckpointError (train it with --mode=train_classifier) when there is none."""
  from cfg_jax import classifier as classifier_lib

  cdir = config.evaluation.classifier_workdir or workdir
  params = classifier_lib.load_classifier_params(config, cdir, mesh=mesh)
  return classifier_lib.create_classifier(config).apply, params


class Evaluator:
  """Holds the compiled samplers, the feature network and the reference features."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    from cfg_jax import data

    self.config, self.workdir = config, workdir
    config_lib.validate(config)
    self.mesh = sharding_lib.make_mesh_from_config(config)  # fsdp as in training
    data.check_available(config.data)
    self.net = feature_net(config, self.mesh)  # before any compile: missing weights fail fast
    # Inception FID beside the dataset's own classifier, when weights are available.
    self.fid_net = self.net if self.net.name == "inception" else inception_net(config, self.mesh)
    self.classifier = self.guide = None
    if config.evaluation.guidance == "classifier":  # likewise a missing classifier checkpoint
      self.classifier = load_guidance_classifier(config, workdir, self.mesh)
    if config.evaluation.guidance == "auto":
      self.guide = autoguidance.load_guide(config, self.mesh)  # (apply, params, step)
    self.ref = reference_features(config, self.net, workdir)
    self.fid_ref = None
    if self.fid_net is not None and self.fid_net is not self.net:
      self.fid_ref = reference_features(config, self.fid_net, workdir)
    self.shape = models.image_shape(config)
    self.apply_fn = models.create_model(config).apply
    self._samplers: dict[int, Any] = {}
    self.writer = writers.create_writer(os.path.join(workdir, "eval"))

  def sampler(self, num_steps: int):
    """f(params, rng, ids, labels, w) of `sampling_runner.generate`; with classifier guidance the
    per-sample w slot carries the classifier scale s, with autoguidance the guide's params are
    bound in (one compile for the whole sweep)."""
    if num_steps not in self._samplers:
      c = self.config
      kw = dict(
        shape=self.shape,
        null_label=c.data.num_classes,
        mesh=self.mesh,
        config=sampler_config(c, num_steps),
      )
      if self.guide is not None:
        apply, params, _ = self.guide
        fn = sampling_runner.bind_second_params(
          autoguidance.make_autoguided_sampler(self.apply_fn, apply, **kw), params
        )
      elif self.classifier is None:
        fn = sampling_runner.make_sampler(self.apply_fn, **kw)
      else:
        from cfg_jax import classifier_guidance

        apply, params = self.classifier
        fn = classifier_guidance.bind_classifier_params(
          classifier_guidance.make_classifier_guided_sampler(
            self.apply_fn, apply, model_labels=c.evaluation.classifier_model_labels, **kw
          ),
          params,
        )
      self._samplers[num_steps] = fn
    return self._samplers[num_steps]

  @property
  def guide_step(self) -> int | None:
    """The autoguidance guide's checkpoint step (None without autoguidance)."""
    return None if self.guide is None else self.guide[2]

  @property
  def features_tag(self) -> str:
    """The guidance in feature file names: `evaluation.guidance`, with autoguidance followed by
    a digest of the guide (runs with two guides keep their features apart)."""
    guidance = self.config.evaluation.guidance
    if self.guide is None:
      return guidance
    settings = json.dumps(autoguidance.describe(self.config, step=self.guide_step), sort_keys=True)
    return f"{guidance}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"

  def settings_key(self, num_steps: int) -> str:
    """`settings_key` of this evaluator's sweep, with the guide's resolved step."""
    return settings_key(self.config, num_steps, guide_step=self.guide_step)

  def fid_columns(
    self, xq: np.ndarray, feats: np.ndarray, m: dict[str, float]
  ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(Inception features, FID_FIELDS and `fid_net`) of quantised samples xq whose
    `sample_metrics` are m with features `feats`; (None, NaNs) without Inception weights."""
    if self.fid_net is None:
      return None, {**dict.fromkeys(FID_FIELDS, float("nan")), "fid_net": ""}
    if self.fid_net is self.net:
      fid_feats, fid = feats, (m["fd"], m["precision"], m["recall"])
    else:
      fid_feats, _ = self.fid_net.apply(xq)
      fid = distribution_metrics(fid_feats, self.fid_ref, pr_k=self.config.evaluation.pr_k)
    return fid_feats, {**dict(zip(FID_FIELDS, fid)), "fid_net": self.fid_net.cache_name}

  def save_features(
    self,
    *,
    step: int,
    num_steps: int,
    w: float,
    labels: np.ndarray,
    feats: np.ndarray,
    fid_feats: np.ndarray | None,
  ) -> None:
    """The cell's sample features (evaluation.save_features), e.g. for a bootstrap of FID."""
    ev = self.config.evaluation
    arrays = {"labels": labels, "features": feats}
    if fid_feats is not None:
      arrays["inception"] = fid_feats
    path = features_path(
      self.workdir,
      step=step,
      num_steps=num_steps,
      guidance=self.features_tag,
      w=w,
      num_samples=ev.num_samples,
    )
    if jax.process_index() == 0:
      fileio.write_atomic(path, lambda f: np.savez(f, **arrays))

  def evaluate_step(self, step: int | None) -> list[dict[str, Any]]:
    """Runs the whole (T, w) sweep on checkpoint `step` (None: the newest intact one); returns
    and records its rows."""
    c, ev = self.config, self.config.evaluation
    params, step = sample.load_params(
      c, self.workdir, self.mesh, step=step, use_ema=True, setting="evaluation.checkpoint_step"
    )
    labels = np.resize(np.arange(c.data.num_classes, dtype=np.int32), ev.num_samples)
    rng = jax.random.fold_in(jax.random.key(c.seed), 3)
    rows = []
    for t in num_steps_values(c):
      t_rows, grids = [], {}
      prefix, name = tag_prefix(c, t)
      for w in guidance_values(c):
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
        xq = quantize(x)
        feats, logits = self.net.apply(xq)
        m = sample_metrics(feats, logits, labels, self.net, self.ref, pr_k=ev.pr_k)
        fid_feats, fid = self.fid_columns(xq, feats, m)
        if ev.save_features:
          self.save_features(
            step=int(step),
            num_steps=int(t),
            w=float(w),
            labels=labels,
            feats=feats,
            fid_feats=fid_feats,
          )
        row = {
          "step": int(step),
          "guidance": ev.guidance,
          "num_steps": int(t),
          strength_field(ev.guidance): float(w),
          "num_samples": int(ev.num_samples),
          "sampler": c.sampling.sampler,
          "feature_net": self.net.name,
          **m,
          **fid,
          "seconds": time.time() - start,
          "sampler_settings": self.settings_key(t),
        }
        t_rows.append(row)
        shown = [k for k in SCALAR_FIELDS if self.fid_net is not None or k not in FID_FIELDS]
        logging.info(
          "eval (%s) step %d T=%d %s=%g: %s",
          ev.guidance,
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
        f"{prefix}/{k}/{name}={guidance_strength(r):g}": r[k]
        for r in t_rows
        for k in SCALAR_FIELDS
        if np.isfinite(r[k])
      }
      self.writer.write_scalars(step, scalars)
      what = {"classifier": "classifier guidance, over s", "auto": "autoguidance, over w"}.get(
        ev.guidance, "over w"
      )
      plot = tradeoff_plot(t_rows, title=f"step {step}, T={t}: FD vs IS {what}", label=name)
      self.writer.write_images(step, {f"{prefix}/tradeoff": plot[None], **grids})
      if jax.process_index() == 0:
        stem = {"classifier": "tradeoff_cg", "auto": "tradeoff_ag"}.get(ev.guidance, "tradeoff")
        images.save_png(plot, os.path.join(self.workdir, "eval", f"{stem}_step{step}_T{t}.png"))
      rows += t_rows
    self.writer.flush()
    append_results(self.workdir, rows)
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


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Evaluates the chosen checkpoint once, or (evaluation.poll) every new checkpoint (of the
  distilled student distill.student, when set, in its own directory)."""
  config_lib.validate(config)
  config, workdir = students.resolve(config, workdir)
  rows = _evaluate(config, workdir)
  logging.info(
    "Done: %d rows (steps %s) in %s and results.csv; plots and TensorBoard events in %s.",
    len(rows),
    ", ".join(str(s) for s in sorted({r["step"] for r in rows})) or "none",
    results_path(workdir),
    os.path.dirname(results_path(workdir)),
  )
  return rows


def _evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  ev = config.evaluation
  evaluator = Evaluator(config, workdir)
  rows: list[dict[str, Any]] = []
  if not ev.poll:
    return evaluator.evaluate_step(None if ev.checkpoint_step < 0 else ev.checkpoint_step)
  last_new = time.time()
  final = config.training.num_train_steps
  while True:
    steps = []
    if os.path.isdir(checkpointing.checkpoint_dir(workdir)):
      steps = checkpointing.Checkpointer(workdir, read_only=True).all_steps()
    done = lambda s: sweep_done(workdir, s, config, guide_step=evaluator.guide_step)
    todo = [s for s in sorted(steps) if not done(s)]
    rows += evaluate_steps(evaluator, todo)
    if todo:
      last_new = time.time()
    if any(done(s) for s in steps if s >= final):
      logging.info("evaluated the final checkpoint (step %d); done.", final)
      return rows
    if time.time() - last_new > ev.poll_timeout_secs:
      logging.info("no new checkpoint for %d s; stopping.", ev.poll_timeout_secs)
      return rows
    time.sleep(ev.poll_interval_secs)
