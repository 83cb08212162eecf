"""`--mode=likelihood`: bits/dim of the eval split under the probability-flow ODE for every w in
`likelihood.w_values` (per class and overall, with the ELBO beside it), from a checkpoint's params,
batch-sharded over all devices with w traced (one compile per sweep). Writes TensorBoard scalars
and `<workdir>/likelihood/results.jsonl`; the columns are in docs/likelihood.md.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from cfg_jax import likelihood, models, sampling, train_state, validation
from cfg_jax import sharding as sharding_lib
from cfg_jax.data import pipeline, sources


def make_fn(apply_fn, *, null_label: int, settings: likelihood.LikelihoodConfig, mesh):
  """jit f(params, rng, ids, x, labels, w) -> per-image dict of `likelihood.image_nll`: params
  and rng replicated, the per-image arrays and outputs batch-sharded over all devices."""

  def f(params, rng, ids, x, labels, w):
    return likelihood.image_nll(
      sampling.unet_eps_fn(apply_fn, params),
      rng=rng,
      ids=ids,
      x=x,
      labels=labels,
      w=w,
      null_label=null_label,
      config=settings,
    )

  rep, dat = sharding_lib.replicated(mesh), sharding_lib.batch_sharded(mesh)
  return jax.jit(f, in_shardings=(rep, rep) + (dat,) * 4, out_shardings=dat)


def batch_layout(n: int, *, batch_size: int, mesh) -> int:
  """One batch size for every batch (the last one padded): a multiple of the mesh size."""
  return int(np.ceil(min(batch_size, n) / mesh.size) * mesh.size)


def compile_fn(fn, params, rng, *, image_shape, batch_size: int, mesh):
  """fn compiled ahead of time for batches of `batch_size`: the one compile of a whole sweep."""
  dat = sharding_lib.batch_sharded(mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=dat)
  b = batch_size
  return fn.lower(
    params,
    rng,
    spec((b,), np.int32),
    spec((b, *image_shape), np.float32),
    spec((b,), np.int32),
    spec((b,), np.float32),
  ).compile()


def run_batches(fn, params, rng, *, x, labels, w: float, batch_size: int, mesh) -> dict:
  """fn over all images in batches of `batch_size` (the last padded with copies of the last
  image); image i uses id i, so results do not depend on the batching or the devices."""
  n, dat = x.shape[0], sharding_lib.batch_sharded(mesh)
  put = lambda a: sharding_lib.host_to_global(a, dat)
  out: dict[str, list] = {}
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    ids = np.arange(start, start + batch_size, dtype=np.int32)
    ww = np.full((batch_size,), w, np.float32)
    res = fn(params, rng, put(ids), put(x[idx]), put(labels[idx]), put(ww))
    for k, v in res.items():
      out.setdefault(k, []).append(sharding_lib.to_host(v)[: stop - start])
  return {k: np.concatenate(v) for k, v in out.items()}


def summary_row(res: dict, labels: np.ndarray, *, num_classes: int) -> dict:
  """Mean bits/dim (ODE and ELBO) with standard errors, overall and per class."""
  row = {}
  for name, mask in [("all", np.ones_like(labels, bool))] + [
    (f"class{c}", labels == c) for c in range(num_classes)
  ]:
    if not mask.any():
      continue
    row[f"bpd_{name}"], row[f"bpd_se_{name}"] = likelihood.summarize(
      res["bpd"][mask], res["bpd_se"][mask]
    )
    if "elbo_bpd" in res:
      row[f"elbo_bpd_{name}"], row[f"elbo_bpd_se_{name}"] = likelihood.summarize(
        res["elbo_bpd"][mask], np.zeros(mask.sum())
      )
  return row


def results_path(workdir: str) -> str:
  return os.path.join(workdir, "likelihood", "results.jsonl")


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """The sweep over likelihood.w_values; returns the result rows (also written to disk)."""
  validation.validate(config, workdir=workdir)
  settings = likelihood.LikelihoodConfig.from_config(config)
  mesh = sharding_lib.make_mesh_from_config(config)
  s = config.likelihood
  sources.check_available(config.data)
  x, labels = pipeline.eval_arrays(
    config.data, max_examples=None if s.num_examples < 0 else s.num_examples
  )
  params, step = train_state.restore_params(
    config,
    workdir,
    mesh,
    step=None if s.checkpoint_step < 0 else s.checkpoint_step,
    use_ema=s.use_ema,
    setting="likelihood.checkpoint_step",
    gather=True,
  )
  num_classes = config.data.num_classes
  fn = make_fn(
    models.create_model(config).apply, null_label=num_classes, settings=settings, mesh=mesh
  )
  rng = jax.random.fold_in(jax.random.key(config.seed), 4)
  batch_size = batch_layout(x.shape[0], batch_size=s.batch_size, mesh=mesh)
  start = time.perf_counter()
  fn = compile_fn(fn, params, rng, image_shape=x.shape[1:], batch_size=batch_size, mesh=mesh)
  compile_seconds = time.perf_counter() - start
  logging.info("compiled the likelihood of a batch of %d in %.1f s", batch_size, compile_seconds)
  writer = metric_writers.create_default_writer(
    os.path.join(workdir, "likelihood"), just_logging=jax.process_index() > 0
  )
  rows = []
  for w in s.w_values:
    start = time.perf_counter()
    res = run_batches(
      fn, params, rng, x=x, labels=labels, w=float(w), batch_size=batch_size, mesh=mesh
    )
    seconds = time.perf_counter() - start
    row = {
      "step": int(step),
      "w": float(w),
      "num_examples": int(x.shape[0]),
      "nfe_mean": float(np.mean(res["nfe"])),
      "nfe_max": int(np.max(res["nfe"])),
      "converged": float(np.mean(res["converged"])),
      "seconds": seconds,
      "compile_seconds": compile_seconds,
      "seconds_per_image": seconds / x.shape[0],
      "settings": settings.describe(),
      **summary_row(res, labels, num_classes=num_classes),
    }
    rows.append(row)
    scalars = {
      f"likelihood/{k}/w={w:g}": v for k, v in row.items() if isinstance(v, float) and k != "w"
    }
    writer.write_scalars(step, scalars)
    logging.info(
      "step %d, w=%g: %.4f ± %.4f bits/dim (ELBO %.4f), NFE %.0f, %.3f s/image",
      step,
      w,
      row["bpd_all"],
      row["bpd_se_all"],
      row.get("elbo_bpd_all", float("nan")),
      row["nfe_mean"],
      row["seconds_per_image"],
    )
  writer.flush()
  if jax.process_index() == 0:
    path = results_path(workdir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
      for row in rows:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    logging.info("Wrote %s", path)
  return rows
