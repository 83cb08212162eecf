"""Tests for the ADM-style U-Net (cfg_jax.models.unet)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax.models import UNet, count_params

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
BATCH = 4


def tiny_unet(**overrides) -> UNet:
  kwargs = dict(
    num_classes=NUM_CLASSES,
    ch=16,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    head_channels=16,
  )
  kwargs.update(overrides)
  return UNet(**kwargs)


def inputs(key, batch=BATCH, labels=None):
  kz, kl, ky = jax.random.split(key, 3)
  z = jax.random.normal(kz, (batch, *IMAGE_SHAPE))
  logsnr = jax.random.uniform(kl, (batch,), minval=-15.0, maxval=15.0)
  if labels is None:
    labels = jax.random.randint(ky, (batch,), 0, NUM_CLASSES + 1)
  return z, logsnr, jnp.asarray(labels, jnp.int32)


def random_params(params_shape, seed, scale=0.1):
  """Random values (numpy, no compilation) for every parameter, so zero-init layers are active."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), params_shape
  )


@pytest.fixture(scope="module")
def tiny():
  """(model, jitted eval-mode apply, random params) for the tiny model."""
  model = tiny_unet()
  z, logsnr, labels = inputs(jax.random.key(0))
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), z, logsnr, labels, train=False)["params"]
  )
  apply = jax.jit(lambda p, z, l, y: model.apply({"params": p}, z, l, y, train=False))
  return model, apply, random_params(shapes, seed=0)


def test_output_shape_and_zero_at_init(tiny):
  model, apply, _ = tiny
  z, logsnr, labels = inputs(jax.random.key(3))
  # An rbg key compiles the initialisers much faster than the default threefry.
  init = jax.jit(lambda key: model.init(key, z, logsnr, labels, train=False)["params"])
  params = init(jax.random.key(1, impl="rbg"))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = apply(params, z, logsnr, labels)
  assert out.shape == z.shape and out.dtype == z.dtype
  assert np.all(np.asarray(out) == 0.0)


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

  # The NULL row does not depend on the other labels in the batch.
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


def test_dropout_only_in_train(tiny):
  _, apply, params = tiny  # dropout does not change the parameter tree
  model = tiny_unet(dropout=0.5)
  z, logsnr, labels = inputs(jax.random.key(7))

  @functools.partial(jax.jit, static_argnames="train")
  def run(p, key, train):
    return model.apply({"params": p}, z, logsnr, labels, train=train, rngs={"dropout": key})

  a, b = run(params, jax.random.key(0), True), run(params, jax.random.key(1), True)
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  # train=False ignores the dropout rng and equals the dropout-free model.
  np.testing.assert_allclose(
    run(params, jax.random.key(0), False), apply(params, z, logsnr, labels), rtol=0, atol=1e-6
  )
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: model.apply({"params": params}, z, logsnr, labels, train=True))


def test_remat_same_params_and_output(tiny):
  _, apply, params = tiny
  model_r = tiny_unet(remat=True)
  z, logsnr, labels = inputs(jax.random.key(10))
  shapes_r = jax.eval_shape(
    lambda: model_r.init(jax.random.key(0), z, logsnr, labels, train=False)["params"]
  )
  assert jax.tree.structure(shapes_r) == jax.tree.structure(params)
  out_r = jax.jit(lambda p: model_r.apply({"params": p}, z, logsnr, labels, train=False))(params)
  np.testing.assert_allclose(out_r, apply(params, z, logsnr, labels), atol=1e-5)


def _primitives(jaxpr) -> list:
  """Every equation's primitive, recursively through sub-jaxprs (jit, remat, custom_vjp...)."""
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


@pytest.mark.slow
def test_remat_checkpoints_every_block_and_keeps_gradients(tiny):
  """model.remat wraps each res-block and attention block in a checkpoint (activations are
  recomputed in the backward pass) without changing the gradients."""
  _, _, params = tiny
  z, logsnr, labels = inputs(jax.random.key(11))

  def grad_fn(model):
    loss = lambda p: jnp.sum(model.apply({"params": p}, z, logsnr, labels, train=False) ** 2)
    return jax.grad(loss)

  def count(model, names):
    eqns = _primitives(jax.make_jaxpr(grad_fn(model))(params).jaxpr)
    return sum(e.primitive.name in names for e in eqns)

  plain, remat = tiny_unet(), tiny_unet(remat=True)
  n_blocks = sum(1 for k in params if "_res_" in k or "sample" in k or "attn" in k)
  checkpoints = ("checkpoint", "remat", "remat2")
  assert count(plain, checkpoints) == 0
  assert count(remat, checkpoints) == n_blocks == 14
  # The backward pass recomputes the blocks' convolutions and matmuls.
  heavy = ("conv_general_dilated", "dot_general")
  assert count(remat, heavy) > count(plain, heavy)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    jax.jit(grad_fn(remat))(params),
    jax.jit(grad_fn(plain))(params),
  )


def test_bfloat16_computes_convs_and_matmuls_in_bfloat16(tiny):
  """dtype=bfloat16: parameters stay float32, every conv and matmul runs on bfloat16 inputs, the
  output is float32, and it stays close to the float32 model."""
  _, apply, params = tiny
  model = tiny_unet(dtype=jnp.bfloat16)
  z, logsnr, labels = inputs(jax.random.key(12))
  fn = lambda p: model.apply({"params": p}, z, logsnr, labels, train=False)
  eqns = _primitives(jax.make_jaxpr(fn)(params).jaxpr)
  heavy = [e for e in eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert heavy
  # The output head (GroupNorm -> SiLU -> conv_out) runs in float32 on purpose: one conv.
  bf16 = [e for e in heavy if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
  assert len(heavy) - len(bf16) <= 1, [str(e.invars) for e in heavy if e not in bf16]
  out = jax.jit(fn)(params)
  assert out.dtype == jnp.float32
  ref = apply(params, z, logsnr, labels)
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_tiny_param_count():
  n = count_params(tiny_unet(), IMAGE_SHAPE)
  print(f"tiny UNet (8x8x1, ch 16, mult (1,2)): {n:,} params")
  assert n == 209_073


def test_imagenet64_param_count():
  model = UNet(
    num_classes=1000,
    ch=192,
    ch_mult=(1, 2, 3, 4),
    num_res_blocks=3,
    attn_resolutions=(32, 16, 8),
    head_channels=64,
    resblock_updown=True,
    dropout=0.1,
  )
  assert count_params(model, (64, 64, 3)) == 295_900_035


def test_imagenet128_param_count():
  model = UNet(
    num_classes=1000,
    ch=256,
    ch_mult=(1, 1, 2, 3, 4),
    num_res_blocks=2,
    attn_resolutions=(32, 16, 8),
    num_heads=4,
    head_channels=-1,
    resblock_updown=True,
  )
  assert count_params(model, (128, 128, 3)) == 421_523_715


def test_no_resblock_updown_runs():
  model = tiny_unet(resblock_updown=False)
  n = count_params(model, IMAGE_SHAPE)
  assert 0 < n < count_params(tiny_unet(), IMAGE_SHAPE)


def test_bad_image_size_raises():
  model = tiny_unet(ch_mult=(1, 2, 2))  # needs sizes divisible by 4
  with pytest.raises(ValueError, match="image size 6 cannot be halved 2 times"):
    count_params(model, (6, 6, 1))


def test_bad_attn_resolution_raises():
  with pytest.raises(ValueError, match="attn_resolutions"):
    count_params(tiny_unet(attn_resolutions=(16,)), IMAGE_SHAPE)


@pytest.mark.parametrize(
  "heads, field",
  [
    (dict(head_channels=16, num_heads=2), "head_channels"),
    (dict(head_channels=-1, num_heads=-1), "num_heads"),
    (dict(head_channels=12), "head_channels"),
  ],
)
def test_bad_head_config_raises(heads, field):
  with pytest.raises(ValueError, match=field):
    count_params(tiny_unet(**heads), IMAGE_SHAPE)


def test_attention_block_matches_float64_reference():
  """AttnBlock (jax.nn.dot_product_attention) equals group norm, the two einsums and the softmax
  of the paper's attention written in float64 numpy from the block's own params."""
  from flax import traverse_util

  from cfg_jax.models.unet import AttnBlock

  b, hw, c, heads, groups = 2, 4, 8, 2, 4
  block = AttnBlock(num_heads=heads, num_groups=groups)
  x = jax.random.normal(jax.random.key(3), (b, hw, hw, c))
  shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), x)["params"])
  params = random_params(shapes, seed=1, scale=0.5)
  out = np.asarray(jax.jit(lambda p, x: block.apply({"params": p}, x))(params, x), np.float64)

  p = {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  x64 = np.asarray(x, np.float64)
  g = x64.reshape(b, hw, hw, groups, c // groups)
  g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-5)
  norm = g.reshape(b, hw * hw, c) * p["norm/scale"] + p["norm/bias"]
  qkv = (norm @ p["qkv/kernel"] + p["qkv/bias"]).reshape(b, hw * hw, 3, heads, c // heads)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(c // heads)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  att = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hw * hw, c)
  ref = x64 + (att @ p["proj_out/kernel"] + p["proj_out/bias"]).reshape(b, hw, hw, c)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
