"""The evaluation job's Inception features: sharded over the devices they match one device, the
weights setting picks them, and their reference cache is keyed by the weights."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from cfg_jax import sharding
from cfg_jax.evaluation import features, inception, results
from cfg_jax.jobs import evaluate as evaluate_job
from tests.helpers import load_config


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
    {
      "data": {"name": "cifar10"},
      "evaluation": {"batch_size": 8, "feature_batch_size": 8, "inception_weights": path},
    }
  )
  x = rs.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)  # 5 does not divide 8 devices
  net = features.feature_net(config, sharding.make_mesh(8))
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
    net = features.inception_net(config, mesh)
    assert net.cache_name == f"inception-{net.key}" and net.key.endswith("-tf299")
    refs.append(features.reference_features(config, net, workdir))
    names.append(sorted(os.listdir(eval_dir)))
  assert len(names[0]) == 1 and len(names[1]) == 2 and names[2] == names[1]
  assert "logits" not in refs[0]  # no classifier in these weights
  assert not np.allclose(refs[0]["mu"], refs[1]["mu"])
  np.testing.assert_array_equal(refs[2]["features"], refs[0]["features"])


def test_inception_net_follows_the_weights_setting(tmp_path, monkeypatch):
  """'' = the default location if a file is there (tests point it at nothing), 'none' = off;
  a dataset evaluated with Inception only says how to make the weights."""
  from tests.helpers import tiny_config

  assert features.inception_net(tiny_config()) is None
  default = random_weights(tmp_path / "inception_fid.npz", 3, with_logits=False)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, default)
  net = features.inception_net(tiny_config(), sharding.make_mesh(1))
  feats, logits = net.apply(np.zeros((2, 8, 8, 1), np.float32))
  assert feats.shape == (2, 2048) and logits is None
  assert features.inception_net(tiny_config(**{"evaluation.inception_weights": "none"})) is None
  config = ml_collections.ConfigDict(
    {"data": {"name": "cifar10"}, "evaluation": {"batch_size": 8, "inception_weights": "none"}}
  )
  with pytest.raises(inception.InceptionWeightsError, match="evaluated with Inception only"):
    features.feature_net(config)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "absent.npz"))
  config.evaluation.inception_weights = ""
  with pytest.raises(inception.InceptionWeightsError, match="make fid-weights"):
    features.feature_net(config)


def test_results_rows_name_the_strength_column_of_their_method(tmp_path):
  import json

  from cfg_jax import guidance, sampling

  rows = [
    {"step": 3, "guidance": "classifier", "scale": 0.0},
    {"step": 3, "guidance": "classifier", "scale": 4.0},
    {"step": 3, "guidance": "cfg", "w": 1.0},
    {"step": 3, "guidance": "auto", "w": 2.0},
  ]
  results.append_results(str(tmp_path), rows)
  assert results.load_results(str(tmp_path)) == rows
  assert [results.guidance_strength(r) for r in rows] == [0.0, 4.0, 1.0, 2.0]
  assert {n: m.strength_field for n, m in guidance.METHODS.items()} == {
    "cfg": "w",
    "classifier": "scale",
    "auto": "w",
    "cfgpp": "scale",
    "apg": "w",
    "cfg_zero": "w",
    "icg": "w",
    "cfg_schedule": "w",
  }
  with open(tmp_path / "eval" / "results.csv") as f:
    header, *lines = f.read().splitlines()
  assert header.startswith("step,guidance,num_steps,w,scale,") and len(lines) == 4
  assert lines[0].startswith("3,classifier,,,0.0,") and lines[2].startswith("3,cfg,,1.0,,")
  # A sweep is done for exactly its settings (sampler + method) and sample count.
  config = load_config("digits")
  config.evaluation.guidance = "classifier"
  config.evaluation.classifier_scales = (0.0, 4.0)
  evaluator = object.__new__(evaluate_job.Evaluator)  # the bookkeeping alone: no networks
  evaluator.config, evaluator.network_steps = config, {"classifier": 7}
  evaluator.method = guidance.from_config(config, section="evaluation")
  evaluator.net, evaluator.fid_net = features.FeatureNet("clf", None, True), None
  key = evaluator.settings_key(config.sampling.num_steps)
  settings = json.loads(key)
  assert settings == {
    **sampling.SamplerConfig.from_config(config).describe(),
    "classifier_guidance": {"model_labels": "cond", "classifier_workdir": "<workdir>"},
  }
  n = config.evaluation.num_samples
  done = [dict(r, num_samples=n, sampler_settings=key, feature_net="clf") for r in rows[:2]]
  assert evaluator.sweep_done(3, done) and not evaluator.sweep_done(4, done)
  assert not evaluator.sweep_done(3, done[:1])
  assert not evaluator.sweep_done(3, [dict(r, num_samples=n + 1) for r in done])
