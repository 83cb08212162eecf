"""Tests for the DiT (cfg_jax.models.dit), with known answers from facebookresearch/DiT."""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib
from cfg_jax.models import DiT, UNet, count_params, create_model, dit

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 2)
BATCH = 4
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "default.py")


def tiny_dit(**overrides) -> DiT:
  kwargs = dict(num_classes=NUM_CLASSES, patch_size=2, hidden_size=32, depth=2, num_heads=4)
  kwargs.update(overrides)
  return DiT(**kwargs)


def inputs(key, batch=BATCH, labels=None):
  kz, kl, ky = jax.random.split(key, 3)
  z = jax.random.normal(kz, (batch, *IMAGE_SHAPE))
  logsnr = jax.random.uniform(kl, (batch,), minval=-15.0, maxval=15.0)
  if labels is None:
    labels = jax.random.randint(ky, (batch,), 0, NUM_CLASSES + 1)
  return z, logsnr, jnp.asarray(labels, jnp.int32)


def param_shapes(model, *extra):
  z, logsnr, labels = inputs(jax.random.key(0))
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), z, logsnr, labels, *extra, train=False)["params"]
  )


def random_params(params_shape, seed, scale=0.1):
  """Random values (numpy, no compilation) for every parameter, so zero-init layers are active."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), params_shape
  )


def flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(k.key for k in path): v for path, v in jax.tree.leaves_with_path(tree)}


@pytest.fixture(scope="module")
def tiny():
  """(model, jitted eval-mode apply, random params) for the tiny DiT."""
  model = tiny_dit()
  apply = jax.jit(lambda p, z, l, y: model.apply({"params": p}, z, l, y, train=False))
  return model, apply, random_params(param_shapes(model), seed=0)


@pytest.fixture(scope="module")
def init_params():
  """The tiny DiT's initial parameters (an rbg key compiles the initialisers much faster)."""
  model = tiny_dit()
  z, logsnr, labels = inputs(jax.random.key(3))
  init = jax.jit(lambda key: model.init(key, z, logsnr, labels, train=False)["params"])
  return init(jax.random.key(1, impl="rbg"))


def test_output_shape_and_zero_at_init(tiny, init_params):
  model, apply, _ = tiny
  z, logsnr, labels = inputs(jax.random.key(3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init_params))
  out = apply(init_params, z, logsnr, labels)
  assert out.shape == z.shape and out.dtype == z.dtype
  assert np.all(np.asarray(out) == 0.0)


def test_initialisation_as_the_reference(init_params):
  """initialize_weights: xavier-uniform kernels (the patch embedding's on [p*p*C, D]), zero
  biases, N(0, 0.02) label table and timestep MLP, zero adaLN modulations and final linear."""
  params = flat(init_params)
  d, (p, c) = 32, (2, IMAGE_SHAPE[-1])

  def check_xavier(name, fan_in, fan_out):
    bound, x = math.sqrt(6.0 / (fan_in + fan_out)), np.asarray(params[name])
    assert 0.9 * bound < np.abs(x).max() <= bound, name
    np.testing.assert_allclose(x.std(), bound / math.sqrt(3), rtol=0.1, err_msg=name)

  check_xavier("x_embedder/kernel", p * p * c, d)
  check_xavier("blocks_0/attn/qkv/kernel", d, 3 * d)
  check_xavier("blocks_1/attn/proj/kernel", d, d)
  check_xavier("blocks_0/mlp/fc1/kernel", d, 4 * d)
  check_xavier("blocks_1/mlp/fc2/kernel", 4 * d, d)
  for name in ("y_embedder/embedding", "t_embedder/mlp_0/kernel", "t_embedder/mlp_2/kernel"):
    np.testing.assert_allclose(np.asarray(params[name]).std(), 0.02, rtol=0.15, err_msg=name)
  zero = [k for k in params if k.endswith("bias") or "adaLN" in k or "final_layer" in k]
  assert len(zero) == 19 and all(not np.asarray(params[k]).any() for k in zero)
  assert len(params) == 19 + 12  # the 12 kernels and tables checked above, or zero


def test_label_and_logsnr_dependence_null_batch_independence(tiny):
  _, apply, params = tiny
  z1, logsnr1, _ = inputs(jax.random.key(4), batch=1)
  z, logsnr = jnp.repeat(z1, BATCH, 0), jnp.repeat(logsnr1, BATCH, 0)
  null = NUM_CLASSES

  # Same z and logsnr in every row: only the label differs.
  out = np.asarray(apply(params, z, logsnr, jnp.array([0, 3, null, 7], jnp.int32)))
  assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
  assert np.abs(out[0] - out[1]).max() > 1e-4
  assert np.abs(out[0] - out[2]).max() > 1e-4

  # The null row does not depend on the other labels in the batch.
  out_b = np.asarray(apply(params, z, logsnr, jnp.array([5, 9, null, null], jnp.int32)))
  np.testing.assert_allclose(out_b[2], out[2], rtol=0, atol=1e-6)
  np.testing.assert_allclose(out_b[3], out[2], rtol=0, atol=1e-6)

  # ... nor on the other inputs (each sample is processed independently).
  z2, logsnr2, labels2 = inputs(jax.random.key(5))
  out_c = np.asarray(
    apply(params, z2.at[2].set(z[2]), logsnr2.at[2].set(logsnr[2]), labels2.at[2].set(null))
  )
  np.testing.assert_allclose(out_c[2], out[2], rtol=0, atol=1e-6)

  # Same z and label, different log-SNR.
  out_d = np.asarray(apply(params, z, logsnr.at[1].set(-logsnr[0]), jnp.full((BATCH,), 1)))
  assert np.abs(out_d[0] - out_d[1]).max() > 1e-4


# facebookresearch/DiT models.py (commit ed81ce2, timm 1.0.31, torch 2.13) in float64, with
# learn_sigma=False, class_dropout_prob=0.1, input_size=4, in_channels=2, patch 2, hidden 16,
# depth 2, 2 heads, 3 classes, every trainable parameter set to `pattern(shape, i)` (i its index in
# the sorted state-dict names), on z = 3 pattern((2, 4, 4, 2), 100) at t = 1000 u(λ) for
# λ = (-3, 6) and labels (1, null): its output, transposed to NHWC.
REFERENCE_EPS = [
  [0.400797, -0.910870, -1.190939, -1.807465, 0.034620, -1.108299, -1.126690, -1.511780],
  [-0.853194, 0.337850, 0.892912, 1.895892, -0.465251, 0.635446, 0.960084, 1.701022],
  [-0.148078, -1.349905, -1.313481, -1.555834, -0.661993, -1.538257, -1.087612, -1.022060],
  [-0.345833, 0.862128, 1.187331, 1.821870, 0.244600, 1.231305, 1.161481, 1.413160],
  [0.397986, -0.850141, -1.095254, -1.721863, 0.137973, -1.127638, -1.259618, -1.695728],
  [-0.817968, 0.306119, 0.809160, 1.799541, -0.613636, 0.592470, 1.042745, 1.870412],
  [0.106126, -1.123462, -1.221385, -1.641435, -0.445638, -1.776564, -1.668411, -1.671971],
  [-0.568837, 0.606687, 1.019689, 1.820935, -0.168511, 1.249444, 1.602331, 2.069216],
]


def pattern(shape, phase):
  return 0.3 * np.sin(2.399963 * np.arange(math.prod(shape)) + phase).reshape(shape)


def reference_state_dict_shapes(p, c, d, depth, num_classes):
  """The shapes of the reference's trainable parameters, by torch name (learn_sigma=False)."""
  shapes = {
    "x_embedder.proj.weight": (d, c, p, p),
    "x_embedder.proj.bias": (d,),
    "t_embedder.mlp.0.weight": (d, 256),
    "t_embedder.mlp.0.bias": (d,),
    "t_embedder.mlp.2.weight": (d, d),
    "t_embedder.mlp.2.bias": (d,),
    "y_embedder.embedding_table.weight": (num_classes + 1, d),
    "final_layer.linear.weight": (p * p * c, d),
    "final_layer.linear.bias": (p * p * c,),
    "final_layer.adaLN_modulation.1.weight": (2 * d, d),
    "final_layer.adaLN_modulation.1.bias": (2 * d,),
  }
  for i in range(depth):
    for name, out, inp in [
      ("attn.qkv", 3 * d, d),
      ("attn.proj", d, d),
      ("mlp.fc1", 4 * d, d),
      ("mlp.fc2", d, 4 * d),
      ("adaLN_modulation.1", 6 * d, d),
    ]:
      shapes[f"blocks.{i}.{name}.weight"] = (out, inp)
      shapes[f"blocks.{i}.{name}.bias"] = (out,)
  return shapes


def test_equals_the_reference_with_its_weights():
  """params_from_reference maps every reference parameter onto one of ours with its shape, and
  the output then equals the reference's (float32 here against its float64 run)."""
  shapes = reference_state_dict_shapes(p=2, c=2, d=16, depth=2, num_classes=3)
  state = {k: pattern(shapes[k], i) for i, k in enumerate(sorted(shapes))}
  state["pos_embed"] = np.zeros((1, 4, 16))  # a fixed buffer there; dropped
  params = dit.params_from_reference(state)
  model = DiT(num_classes=3, patch_size=2, hidden_size=16, depth=2, num_heads=2)
  z = jnp.asarray(3 * pattern((2, 4, 4, 2), 100.0), jnp.float32)
  logsnr, labels = jnp.array([-3.0, 6.0]), jnp.array([1, 3], jnp.int32)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), z, logsnr, labels, train=False))
  assert jax.tree.map(lambda s: s.shape, expected["params"]) == jax.tree.map(np.shape, params)
  out = jax.jit(lambda p: model.apply({"params": p}, z, logsnr, labels, train=False))(params)
  np.testing.assert_allclose(
    np.asarray(out).reshape(-1), np.reshape(REFERENCE_EPS, -1), rtol=0, atol=5e-6
  )


def test_patchify_unpatchify_and_the_patch_embedding():
  x = jax.random.normal(jax.random.key(6), (2, 8, 12, 3))
  tokens = dit.patchify(x, 4)
  assert tokens.shape == (2, 2 * 3, 4 * 4 * 3)
  np.testing.assert_array_equal(dit.unpatchify(tokens, 4, 2, 3), x)
  # Token (1, 2) is the patch at rows 4..7, columns 8..11, flattened (row, column, channel).
  np.testing.assert_array_equal(tokens[:, 1 * 3 + 2], x[:, 4:8, 8:12].reshape(2, -1))
  # The strided p x p conv is the Dense of the patches with the kernel flattened the same way.
  conv = nn.Conv(5, (4, 4), strides=(4, 4), padding="VALID")
  kernel, bias = jax.random.normal(jax.random.key(7), (4, 4, 3, 5)), jnp.arange(5.0)
  variables = {"params": {"kernel": kernel, "bias": bias}}
  np.testing.assert_allclose(
    conv.apply(variables, x).reshape(2, 6, 5),
    tokens @ kernel.reshape(-1, 5) + bias,
    rtol=1e-5,
    atol=1e-5,
  )


def reference_pos_embed(embed_dim, grid_size):
  """DiT's get_2d_sincos_pos_embed (from MAE), re-derived: meshgrid(w, h), with the first half of
  the channels computed from grid[0] (the column index)."""

  def one_d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  g = np.arange(grid_size, dtype=np.float32)
  grid = np.stack(np.meshgrid(g, g), axis=0).reshape(2, 1, grid_size, grid_size)
  return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_pos_embed_equals_the_reference_formula():
  np.testing.assert_allclose(dit.pos_embed_2d(16, 4, 4), reference_pos_embed(16, 4), atol=1e-7)
  # A non-square grid: the first half of the channels varies with the column alone.
  emb = dit.pos_embed_2d(8, 2, 3).reshape(2, 3, 8)
  np.testing.assert_array_equal(emb[0, :, :4], emb[1, :, :4])
  np.testing.assert_array_equal(emb[:, 0, 4:], emb[:, 2, 4:])
  np.testing.assert_allclose(emb[1, 2], reference_pos_embed(8, 3)[1 * 3 + 2], atol=1e-7)
  # A constant, as the reference's frozen buffer: no parameter of the model.
  assert not [k for k in flat(param_shapes(tiny_dit())) if "pos" in k]


def _primitives(jaxpr) -> list:
  """Every equation, recursively through sub-jaxprs (jit, remat, custom_vjp...)."""
  out = []
  for eqn in jaxpr.eqns:
    out.append(eqn)
    for v in eqn.params.values():
      for j in v if isinstance(v, (tuple, list)) else (v,):
        inner = getattr(j, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          out.extend(_primitives(inner))
        elif hasattr(j, "eqns"):
          out.extend(_primitives(j))
  return out


def test_remat_same_params_and_output_and_one_checkpoint_per_block(tiny):
  _, apply, params = tiny
  model_r = tiny_dit(remat=True)
  assert jax.tree.structure(param_shapes(model_r)) == jax.tree.structure(params)
  z, logsnr, labels = inputs(jax.random.key(10))
  fn = lambda p: model_r.apply({"params": p}, z, logsnr, labels, train=False)
  eqns = _primitives(jax.make_jaxpr(fn)(params).jaxpr)
  assert sum(e.primitive.name in ("checkpoint", "remat", "remat2") for e in eqns) == 2
  np.testing.assert_allclose(jax.jit(fn)(params), apply(params, z, logsnr, labels), atol=1e-5)


def test_bfloat16_computes_matmuls_in_bfloat16(tiny):
  """dtype=bfloat16: parameters stay float32, every conv and matmul but the final linear runs
  on bfloat16 inputs, the output is float32 and close to the float32 model's."""
  _, apply, params = tiny
  model = tiny_dit(dtype=jnp.bfloat16)
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(param_shapes(model)))
  z, logsnr, labels = inputs(jax.random.key(12))
  fn = lambda p: model.apply({"params": p}, z, logsnr, labels, train=False)
  eqns = _primitives(jax.make_jaxpr(fn)(params).jaxpr)
  heavy = [e for e in eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  # patch conv, 2 t-MLP, per block adaLN + qkv + 2 attention + proj + fc1 + fc2, final 2.
  assert len(heavy) == 1 + 2 + 2 * 7 + 2
  f32 = [e for e in heavy if not all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
  assert len(f32) == 1 and f32[0].outvars[0].aval.shape[-1] == 2 * 2 * 2  # the final linear
  out = jax.jit(fn)(params)
  assert out.dtype == jnp.float32
  ref = apply(params, z, logsnr, labels)
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_attention_is_dot_product_attention_and_softmax_attention(tiny, monkeypatch):
  _, apply, params = tiny
  calls = []
  real = jax.nn.dot_product_attention

  def spy(q, k, v, *args, **kwargs):
    calls.append(q.shape)
    return real(q, k, v, *args, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  z, logsnr, labels = inputs(jax.random.key(13))
  jax.eval_shape(lambda p: tiny_dit().apply({"params": p}, z, logsnr, labels, train=False), params)
  assert calls == [(BATCH, 16, 4, 8)] * 2  # [B, tokens, heads, head_dim], once per block
  monkeypatch.undo()

  attn = dit.Attention(num_heads=4)
  x = jax.random.normal(jax.random.key(14), (2, 16, 32))
  p = params["blocks_0"]["attn"]
  qkv = np.asarray(x @ p["qkv"]["kernel"] + p["qkv"]["bias"]).reshape(2, 16, 3, 4, 8)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  h = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 16, 32)
  expected = h @ np.asarray(p["proj"]["kernel"]) + np.asarray(p["proj"]["bias"])
  np.testing.assert_allclose(attn.apply({"params": p}, x), expected, rtol=1e-5, atol=1e-5)


def test_w_embedding_adds_its_mlp_and_is_the_plain_model_at_init(tiny):
  _, apply, params = tiny
  student = tiny_dit(w_embedding=True)
  w = jnp.array([0.0, 1.0, 2.0, 4.0])
  shapes = param_shapes(student, w)
  d = 32
  n_plain, n_student = count_params(tiny_dit(), IMAGE_SHAPE), count_params(student, IMAGE_SHAPE)
  assert n_student - n_plain == (256 * d + d) + (d * d + d)
  assert set(shapes) - set(params) == {"w_embedder"}
  # The plain model's params plus the student's freshly initialised w MLP: the plain model.
  z, logsnr, labels = inputs(jax.random.key(15))
  init = jax.jit(lambda key: student.init(key, z, logsnr, labels, w, train=False)["params"])
  student_params = {**params, "w_embedder": init(jax.random.key(0, impl="rbg"))["w_embedder"]}
  run = jax.jit(lambda p, w: student.apply({"params": p}, z, logsnr, labels, w, train=False))
  np.testing.assert_allclose(run(student_params, w), apply(params, z, logsnr, labels), atol=1e-5)
  # Trained (perturbed), it depends on w.
  student_params["w_embedder"] = random_params(shapes["w_embedder"], seed=1)
  out = np.asarray(run(student_params, jnp.array([0.0, 0.0, 0.0, 4.0])))
  assert np.abs(out[3] - np.asarray(run(student_params, jnp.zeros(4)))[3]).max() > 1e-4
  with pytest.raises(ValueError, match="w_embedding=True but w was not given"):
    jax.eval_shape(
      lambda: student.apply({"params": student_params}, z, logsnr, labels, train=False)
    )


# facebookresearch/DiT's trainable parameters (benchmarks/dit_param_counts.py --reference_dir):
# learn_sigma=False, class_dropout_prob=0.1, by preset and (H, W, C, num_classes).
REFERENCE_COUNTS = [
  ("S/2", (32, 32, 4, 1000), 32_858_896),
  ("S/2", (28, 28, 1, 10), 32_469_508),
  ("B/4", (32, 32, 4, 1000), 130_377_280),
  ("B/4", (64, 64, 3, 1000), 130_352_688),
  ("XL/2", (32, 32, 4, 1000), 674_816_272),
  ("XL/2", (28, 28, 1, 10), 673_648_132),
]


@pytest.mark.parametrize("preset, shape, expected", REFERENCE_COUNTS)
def test_param_count_equals_the_reference(preset, shape, expected):
  height, width, channels, num_classes = shape
  model = DiT(num_classes=num_classes, **dit.preset_sizes(preset))
  assert count_params(model, (height, width, channels)) == expected


def test_presets_are_the_papers():
  assert len(dit.PRESETS) == 12
  assert dit.preset_sizes("XL/2") == dict(patch_size=2, hidden_size=1152, depth=28, num_heads=16)
  assert dit.preset_sizes("B/8") == dict(patch_size=8, hidden_size=768, depth=12, num_heads=12)
  assert dit.preset_sizes("L/4") == dict(patch_size=4, hidden_size=1024, depth=24, num_heads=16)
  assert dit.preset_sizes("S/4") == dict(patch_size=4, hidden_size=384, depth=12, num_heads=6)


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(patch_size=3), "image size 8x8 is not divisible by patch_size=3 .model.dit_patch_size"),
    (dict(num_heads=5), "hidden_size=32 .model.dit_hidden_size. is not divisible by num_heads=5"),
    (dict(hidden_size=18, num_heads=2), "must be a multiple of 4"),
    (dict(depth=0), "model.dit_depth"),
    (dict(dtype=jnp.float64), "model.dtype"),
  ],
)
def test_bad_sizes_raise(overrides, match):
  with pytest.raises(ValueError, match=match):
    count_params(tiny_dit(**overrides), IMAGE_SHAPE)


def test_unknown_preset_raises():
  with pytest.raises(ValueError, match=r"model.dit_preset='M/2'.*'XL/8'"):
    dit.preset_sizes("M/2")


def test_create_model_dispatches_on_model_name():
  config = config_lib.read_config(DEFAULT_CONFIG)
  with config.unlocked():
    config.data.num_classes = NUM_CLASSES
  assert isinstance(create_model(config), UNet)
  config.model.name = "dit"
  config.model.dit_hidden_size, config.model.dit_num_heads = 48, 3
  model = create_model(config)
  assert isinstance(model, DiT) and model.num_classes == NUM_CLASSES
  assert (model.hidden_size, model.num_heads, model.depth) == (48, 3, config.model.dit_depth)
  # Its trainable parameters are the reference's (the state-dict shapes above) for those sizes.
  shapes = reference_state_dict_shapes(
    p=config.model.dit_patch_size, c=2, d=48, depth=config.model.dit_depth, num_classes=10
  )
  assert count_params(model, IMAGE_SHAPE) == sum(math.prod(s) for s in shapes.values())
  config.model.dit_preset = "B/4"
  config.distill.student = "stage1"
  model = create_model(config)
  assert (model.patch_size, model.hidden_size, model.depth, model.num_heads) == (4, 768, 12, 12)
  assert model.w_embedding
  config.model.dit_preset = "B/3"
  with pytest.raises(ValueError, match="model.dit_preset"):
    create_model(config)
  config.model.name = "vit"
  with pytest.raises(ValueError, match=r"model.name='vit' is not one of \('unet', 'dit'\)"):
    create_model(config)
