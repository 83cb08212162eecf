"""The evaluation job's Inception features run sharded over the devices and match one device."""
import jax
import ml_collections
from flax import traverse_util
import numpy as np

from cfg_jax import evaluate, sharding
from cfg_jax.evaluation import inception


def test_inception_features_sharded_match_single_device(tmp_path):
  rs = np.random.RandomState(0)
  params = {k: (rs.standard_normal(shape) * 0.05).astype(np.float32)
            for k, shape in inception.param_shapes().items()}
  path = str(tmp_path / "inception.npz")
  inception.save_params(traverse_util.unflatten_dict(params, sep="/"), path)
  config = ml_collections.ConfigDict({
      "data": {"name": "cifar10"},
      "evaluation": {"batch_size": 8, "inception_weights": path}})
  x = rs.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)  # 5 does not divide 8 devices
  net = evaluate.feature_net(config, sharding.make_mesh(8))
  feats, logits = net.apply(x)
  assert feats.shape == (5, 2048) and logits.shape == (5, 1008)
  ref = inception.jit_features(inception.load_params(path), x)
  np.testing.assert_allclose(feats, ref["pool"], rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(logits, ref["logits"], rtol=2e-4, atol=2e-4)
  assert jax.device_count() == 8
