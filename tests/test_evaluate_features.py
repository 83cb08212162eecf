"""The evaluation job's Inception features: sharded over the devices they match one device, the
weights setting picks them, and their reference cache is keyed by the weights."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from cfg_jax import evaluate, sharding
from cfg_jax.evaluation import inception


@pytest.mark.slow
def test_inception_features_sharded_match_single_device(tmp_path):
  rs = np.random.RandomState(0)
  params = {
    k: (rs.standard_normal(shape) * 0.05).astype(np.float32)
    for k, shape in inception.param_shapes().items()
  }
  path = str(tmp_path / "inception.npz")
  inception.save_params(traverse_util.unflatten_dict(params, sep="/"), path)
  config = ml_collections.ConfigDict(
    {"data": {"name": "cifar10"}, "evaluation": {"batch_size": 8, "inception_weights": path}}
  )
  x = rs.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)  # 5 does not divide 8 devices
  net = evaluate.feature_net(config, sharding.make_mesh(8))
  feats, logits = net.apply(x)
  assert feats.shape == (5, 2048) and logits.shape == (5, 1008)
  ref = inception.jit_features(inception.load_params(path), x)
  np.testing.assert_allclose(feats, ref["pool"], rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(logits, ref["logits"], rtol=2e-4, atol=2e-4)
  assert jax.device_count() == 8


def random_weights(path, seed, *, with_logits=True):
  rs = np.random.RandomState(seed)
  params = {
    k: (rs.standard_normal(shape) * 0.05).astype(np.float32)
    for k, shape in inception.param_shapes(with_logits=with_logits).items()
  }
  inception.save_params(traverse_util.unflatten_dict(params, sep="/"), str(path))
  return str(path)


def test_reference_cache_is_keyed_by_the_weights(tmp_path):
  """Reference features computed with one weight file are never reused for another: the cache
  file names the weights' digest and the preprocessing; the same weights under another path
  (or re-saved) share it."""
  from tests.helpers import tiny_config

  first = random_weights(tmp_path / "a.npz", 1, with_logits=False)
  second = random_weights(tmp_path / "b.npz", 2, with_logits=False)
  copy = tmp_path / "copy_of_a.npz"
  copy.write_bytes(open(first, "rb").read())
  workdir, mesh = str(tmp_path / "run"), sharding.make_mesh(1)
  eval_dir = os.path.join(workdir, "eval")
  refs, names = [], []
  for path in (first, second, str(copy)):
    config = tiny_config(
      **{
        "evaluation.inception_weights": path,
        "evaluation.reference_num_examples": 3,
        "evaluation.batch_size": 3,
      }
    )
    net = evaluate.inception_net(config, mesh)
    assert net.cache_name == f"inception-{net.key}" and net.key.endswith("-tf299")
    refs.append(evaluate.reference_features(config, net, workdir))
    names.append(sorted(os.listdir(eval_dir)))
  assert len(names[0]) == 1 and len(names[1]) == 2 and names[2] == names[1]
  assert "logits" not in refs[0]  # no classifier in these weights
  assert not np.allclose(refs[0]["mu"], refs[1]["mu"])
  np.testing.assert_array_equal(refs[2]["features"], refs[0]["features"])


def test_inception_net_follows_the_weights_setting(tmp_path, monkeypatch):
  """'' = the default location if a file is there (tests point it at nothing), 'none' = off;
  a dataset evaluated with Inception only says how to make the weights."""
  from tests.helpers import tiny_config

  assert evaluate.inception_net(tiny_config()) is None
  default = random_weights(tmp_path / "inception_fid.npz", 3, with_logits=False)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, default)
  net = evaluate.inception_net(tiny_config(), sharding.make_mesh(1))
  feats, logits = net.apply(np.zeros((2, 8, 8, 1), np.float32))
  assert feats.shape == (2, 2048) and logits is None
  assert evaluate.inception_net(tiny_config(**{"evaluation.inception_weights": "none"})) is None
  config = ml_collections.ConfigDict(
    {"data": {"name": "cifar10"}, "evaluation": {"batch_size": 8, "inception_weights": "none"}}
  )
  with pytest.raises(inception.InceptionWeightsError, match="evaluated with Inception only"):
    evaluate.feature_net(config)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "absent.npz"))
  config.evaluation.inception_weights = ""
  with pytest.raises(inception.InceptionWeightsError, match="make fid-weights"):
    evaluate.feature_net(config)


def test_results_rows_name_the_classifier_scale_and_old_files_still_load(tmp_path):
  import json

  from tests.helpers import load_config

  config = load_config("digits")
  config.evaluation.guidance = "classifier"
  config.evaluation.classifier_scales = (0.0, 4.0)
  config.evaluation.num_steps_values = (4,)
  key, n = evaluate.settings_key(config, 4), config.evaluation.num_samples
  os.makedirs(tmp_path / "eval")
  with open(evaluate.results_path(str(tmp_path)), "w") as f:  # as written before `scale`
    for s in (0.0, 4.0):
      f.write(
        json.dumps(
          {"step": 3, "guidance": "classifier", "w": s, "num_samples": n, "sampler_settings": key}
        )
        + "\n"
      )
    f.write(json.dumps({"step": 3, "w": 1.0, "num_samples": n}) + "\n")  # before `guidance`
  rows = evaluate.load_results(str(tmp_path))
  assert [(r["guidance"], "w" in r, evaluate.guidance_strength(r)) for r in rows] == [
    ("classifier", False, 0.0),
    ("classifier", False, 4.0),
    ("cfg", True, 1.0),
  ]
  assert evaluate.sweep_done(str(tmp_path), 3, config)
  assert not evaluate.sweep_done(str(tmp_path), 4, config)
  evaluate.append_results(str(tmp_path), [{"step": 4, "guidance": "classifier", "scale": 4.0}])
  with open(tmp_path / "eval" / "results.csv") as f:
    header, *lines = f.read().splitlines()
  assert header.startswith("step,guidance,num_steps,w,scale,") and len(lines) == 4
  assert lines[0].startswith("3,classifier,,,0.0,") and lines[2].startswith("3,cfg,,1.0,,")
