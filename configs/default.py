"""Base config of cfg_jax: every field, with its section. Per-experiment files override a few.

Sections: data, model, diffusion, guidance, training, sampling, evaluation. Every field can be
overridden from the command line, e.g. `--config.training.batch_size=128`; a key that does not
exist is an error (the config is locked).

    python -m cfg_jax.main --config=configs/default.py --workdir=runs/default

Config files import only ml_collections and the standard library; the others build on this one
through `runpy` (they are loaded by path, not as a package) and may use its `parse_arg`.
"""

import ml_collections
from ml_collections import config_dict


def parse_arg(arg, **defaults):
  """The config argument `k1=v1,k2=v2` (a bare `k` means True) over `defaults`, as a ConfigDict;
  values take the type of their default, and an unknown key is an error."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; valid ones: {sorted(defaults)}.")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() in ("", "1", "true", "yes")
    else:
      out[key] = kind(value)
  return ml_collections.ConfigDict(out)


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # base of every random key: init, data order, dropout, sampling noise

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # digits | cifar10 | imagenet64 | imagenet128
  c.data.data_dir = ""  # '' = tfds default (digits: ~/.cache/cfg_jax/tensorflow_datasets)
  # Set from the dataset (data.name) when the config is loaded or validated: leave them unset.
  # The null label ∅ is the extra class id `num_classes`.
  c.data.image_size = config_dict.placeholder(int)
  c.data.num_classes = config_dict.placeholder(int)  # set from data.name; the null label is this id
  c.data.random_flip = False  # random horizontal flips of training images

  # The network: the ADM-style U-Net (models/unet.py) or a DiT (models/dit.py).
  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"  # unet (ADM U-Net) | dit (DiT, adaLN-Zero)
  c.model.ch = 16  # base channel count of the U-Net
  c.model.ch_mult = (1, 2)  # channel multiplier per resolution level (one level per entry)
  c.model.num_res_blocks = 1  # residual blocks per level
  c.model.attn_resolutions = (4,)  # feature-map sizes that get self-attention
  c.model.head_channels = 16  # > 0: heads = channels // head_channels; else use num_heads
  c.model.num_heads = -1  # attention heads when head_channels <= 0
  c.model.dropout = 0.0  # dropout rate in the residual blocks
  c.model.resblock_updown = True  # down/upsample with residual blocks (ADM) instead of conv/pool
  c.model.num_groups = 32  # GroupNorm groups (at most the channel count)
  c.model.dtype = "float32"  # computation dtype; parameters stay float32
  c.model.remat = False  # rematerialise activations in the backward pass (saves memory)
  # DiT fields (model.name = dit; dtype and remat above apply too, the U-Net fields do not).
  c.model.dit_preset = ""  # '' = the dit_* sizes below; "S/2" .. "XL/8" (paper models) set them
  c.model.dit_patch_size = 2  # patch side p: the image is cut into (H/p)(W/p) tokens
  c.model.dit_hidden_size = 64  # token width D (a multiple of 4 and of dit_num_heads)
  c.model.dit_depth = 2  # number of adaLN-Zero transformer blocks
  c.model.dit_num_heads = 4  # attention heads per block
  c.model.dit_mlp_ratio = 4.0  # MLP hidden width / dit_hidden_size

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.logsnr_min = -20.0  # lambda_min of the cosine schedule (paper: -20)
  c.diffusion.logsnr_max = 20.0  # lambda_max of the cosine schedule (paper: 20)

  c.guidance = ml_collections.ConfigDict()
  c.guidance.p_uncond = 0.1  # paper: 0.1 / 0.2 / 0.5
  c.guidance.w_values = (0.0, 1.0, 3.0)  # w of the sample grids written during training

  c.training = ml_collections.ConfigDict()
  c.training.batch_size = 64  # global, over all devices and processes
  c.training.num_train_steps = 1000  # train until this step
  c.training.learning_rate = 1e-3  # peak Adam learning rate (after warmup)
  c.training.warmup_steps = 100  # linear learning-rate warmup steps
  c.training.adam_b1 = 0.9  # Adam beta_1
  c.training.adam_b2 = 0.999  # Adam beta_2
  c.training.grad_clip = 1.0  # global-norm clipping; 0 disables
  c.training.ema_decay = 0.999  # decay of the EMA params that sampling uses
  c.training.log_every_steps = 100  # console and TensorBoard metrics every this many steps
  c.training.checkpoint_every_steps = 500  # orbax checkpoint every this many steps (and at the end)
  c.training.sample_every_steps = 0  # 0: sample grids only at the end
  c.training.grid_samples_per_class = 10  # columns of the class-per-row sample grids
  c.training.max_checkpoints_to_keep = 3  # older checkpoints are deleted
  # Non-finite loss/gradient: the update is always skipped and counted; after this many in a
  # row training stops with an error (0: never stop).
  c.training.max_consecutive_nonfinite = 100

  # Device mesh (cfg_jax/sharding.py): (data, fsdp) with data = devices / fsdp. The batch splits
  # over all devices; with fsdp > 1, params, EMA and optimizer state are sharded over `fsdp`
  # (arrays of at least fsdp_min_size elements, on their largest dimension fsdp divides).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1  # 1 = data parallel (everything replicated)
  c.mesh.fsdp_min_size = 2**16  # smaller arrays stay replicated

  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_steps = 64  # T (paper: 256)
  c.sampling.v = 0.3  # paper: 0.3 at 64x64, 0.2 at 128x128
  c.sampling.clip_x = True  # static clip of x~ to [-1, 1]; False turns thresholding=static off
  # Sampler and guidance variants (cfg_jax/sampling.py); the defaults are the paper's sampler.
  c.sampling.sampler = "ancestral"  # ancestral (paper, uses v) | ddim (uses eta) | euler | heun
  c.sampling.eta = 0.0  # DDIM eta in [0, 1]: 0 deterministic, 1 = ancestral with v = 0
  c.sampling.guidance_interval = ()  # (lambda_lo, lambda_hi): guide only there; () = everywhere
  c.sampling.rescale_phi = 0.0  # CFG rescale phi in [0, 1] (Lin et al. 2023); 0 = off
  c.sampling.thresholding = "static"  # none | static (clip to [-1, 1]) | dynamic (Imagen)
  c.sampling.dynamic_threshold_p = 0.995  # percentile of |x~| for thresholding=dynamic
  c.sampling.num_samples = 100  # --mode=sample draws this many per w
  c.sampling.labels = ()  # () = cycle through all classes
  c.sampling.w_values = (0.0, 1.0, 3.0)  # guidance strengths w of --mode=sample
  # The guidance method of --mode=sample (and the training grids' are always cfg): cfg |
  # classifier | auto | cfgpp | apg | cfg_zero | icg | cfg_schedule (cfg_jax/guidance/); its
  # strengths are sampling.w_values (the method's own: w, a classifier scale, CFG++'s l).
  c.sampling.guidance = "cfg"
  c.sampling.batch_size = 500  # samples per sampler call (over all devices)
  c.sampling.checkpoint_step = -1  # -1 = latest
  c.sampling.use_ema = True  # sample with the EMA params (False: the raw params)

  # --mode=evaluate: the trade-off sweep (see cfg_jax/jobs/evaluate.py).
  c.evaluation = ml_collections.ConfigDict()
  c.evaluation.w_values = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0)  # paper's grid
  c.evaluation.num_steps_values = ()  # T values to sweep; () = (sampling.num_steps,)
  c.evaluation.num_samples = 1000  # per (T, w); the paper uses 50,000
  c.evaluation.batch_size = 500  # samples per sampler call (over all devices)
  # Images per Inception call (at 299x299 it needs ~36 MiB per image on a CPU; the digits
  # classifier takes evaluation.batch_size); 0 = auto: 50 on CPU, 500 on GPU / TPU.
  c.evaluation.feature_batch_size = 0
  c.evaluation.reference_split = "train"  # dataset split of the reference statistics
  c.evaluation.reference_num_examples = -1  # -1 = the whole split
  c.evaluation.pr_k = 3  # k of the k-NN precision / recall
  # .npz of the FID Inception-v3: "" = ~/.cache/cfg_jax/inception_fid.npz if it exists (`make
  # fid-weights`); "none" = no Inception (digits and mnist keep their classifier metrics only).
  c.evaluation.inception_weights = ""
  # Also write each (T, w) cell's sample features to <workdir>/eval/features/ (to bootstrap FID).
  c.evaluation.save_features = False
  c.evaluation.checkpoint_step = -1  # -1 = latest (ignored when polling)
  c.evaluation.poll = False  # keep evaluating new checkpoints as training runs
  c.evaluation.poll_interval_secs = 30  # seconds between looks for a new checkpoint
  c.evaluation.poll_timeout_secs = 3600  # stop after this long without a new checkpoint
  # After training on digits: class accuracy of guided samples judged by an RBF SVM fit on the
  # digits train split (a digits-only sanity metric, not an Inception score).
  c.evaluation.judge_num_samples = 500
  c.evaluation.judge_w_values = (0.0, 1.0, 3.0)  # w values the digits judge scores
  # Which guidance the sweep evaluates (cfg_jax/guidance/): 'cfg' (classifier-free, over
  # w_values), 'classifier' (classifier guidance over classifier_scales, with the classifier of
  # --mode=train_classifier in <classifier_workdir>/classifier), 'auto' (autoguidance by the guide
  # of c.autoguidance), 'cfgpp' (CFG++, over cfgpp.scales; DDIM), 'apg' (c.apg), 'cfg_zero'
  # (c.cfg_zero), 'icg' (c.icg) or 'cfg_schedule' (c.w_schedule), all but two over w_values.
  c.evaluation.guidance = "cfg"
  c.evaluation.classifier_scales = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # scales s (guidance=classifier)
  c.evaluation.classifier_model_labels = "cond"  # cond: eps(z, c) | null: eps(z, null), p_uncond=1
  c.evaluation.classifier_workdir = ""  # '' = the evaluated workdir

  # --mode=likelihood: bits/dim of the test split under the probability-flow ODE of the guided
  # eps at each w (cfg_jax/likelihood.py; w = -1 unconditional, 0 conditional), beside the ELBO.
  c.likelihood = ml_collections.ConfigDict()
  c.likelihood.w_values = (-1.0, 0.0, 0.3, 1.0, 3.0)  # guidance strengths w, one compile
  c.likelihood.num_examples = -1  # first N examples of the eval split; -1 = all
  c.likelihood.batch_size = 100  # images per ODE solve (global, split over devices)
  c.likelihood.solver = "dopri5"  # dopri5 (adaptive, rtol/atol) | heun (fixed grid, num_steps)
  c.likelihood.rtol = 1e-5  # dopri5 relative tolerance
  c.likelihood.atol = 1e-5  # dopri5 absolute tolerance
  c.likelihood.max_steps = 500  # dopri5 steps before a solve counts as not converged
  c.likelihood.num_steps = 128  # heun grid points
  c.likelihood.divergence = "hutchinson"  # exact (one JVP per pixel) | hutchinson
  c.likelihood.num_probes = 1  # hutchinson: Rademacher probes per image
  c.likelihood.elbo_num_logsnrs = 32  # stratified log-SNRs of the ELBO per image; 0 = no ELBO
  c.likelihood.checkpoint_step = -1  # -1 = latest
  c.likelihood.use_ema = True  # the EMA parameters (else the raw ones)

  # Autoguidance (Karras et al. 2024), with evaluation.guidance or sampling.guidance 'auto':
  # eps~ = (1 + w) eps(z, c) - w eps_guide(z, c), the guide a weaker conditional model of the
  # same data (e.g. configs/digits_guide.py, or an earlier checkpoint of the same run).
  c.autoguidance = ml_collections.ConfigDict()
  c.autoguidance.workdir = ""  # the guide's workdir (required with guidance 'auto')
  c.autoguidance.checkpoint_step = -1  # -1 = latest
  c.autoguidance.config = ""  # the guide's config file, 'path' or 'path:arg'; '' = this config

  # Guidance since the paper (cfg_jax/guidance/; the math in docs/samplers.md), each selected by
  # sampling.guidance / evaluation.guidance. CFG++ (Chung et al. 2024): x̂ guided by
  # ε_∅ + l (ε_c − ε_∅), re-noised with ε_∅; a DDIM-family step.
  c.cfgpp = ml_collections.ConfigDict()
  c.cfgpp.scales = (0.2, 0.4, 0.6, 0.8, 1.0)  # the l that --mode=evaluate sweeps (paper: 0..1)
  # APG (Sadat et al. 2024): Δ = x̂_c − x̂_∅ with momentum, norm threshold, split along x̂_c.
  c.apg = ml_collections.ConfigDict()
  c.apg.eta = 0.0  # share of the update along x̂_c kept (paper: 0; 1 = plain CFG)
  c.apg.norm_threshold = 0.0  # r: the update's norm is clipped to it per sample; 0 = no clip
  c.apg.momentum = 0.0  # β of the running average of Δ (paper: -0.5); 0 = none
  # CFG-Zero* (Fan et al. 2025): ε_∅ scaled by s* = <ε_c, ε_∅>/|ε_∅|², x̃ = 0 for K steps.
  c.cfg_zero = ml_collections.ConfigDict()
  c.cfg_zero.zero_steps = 0  # K: the first sampler steps with x̃ = 0 (zero-init); 0 = none
  c.cfg_zero.optimized_scale = True  # use s* (False: s* = 1, plain CFG with K = 0)
  # ICG (Sadat et al. 2024): guide against a random condition c̃ instead of ∅.
  c.icg = ml_collections.ConfigDict()
  c.icg.condition = "random"  # random (c̃ uniform over the classes) | null (c̃ = ∅: plain CFG)
  # Guidance-weight schedules (Wang et al. 2024), guidance 'cfg_schedule': w_t = w f(s).
  c.w_schedule = ml_collections.ConfigDict()
  c.w_schedule.shape = "linear"  # constant | linear (2s) | cosine (1 - cos pi s); mean 1 over s
  c.w_schedule.variable = "step"  # s from noise to data in sampler steps | logsnr

  # --mode=train_classifier: the noise-conditional classifier of classifier guidance
  # (cfg_jax/models/classifier.py, cfg_jax/jobs/train_classifier.py). Sized for the 8x8 digits: an ADM-style encoder of width 16 at 8x8
  # and 32 at 4x4, attention at 4x4.
  c.classifier = ml_collections.ConfigDict()
  c.classifier.ch = 16  # base channel count of the classifier
  c.classifier.ch_mult = (1, 2)  # channel multiplier per level
  c.classifier.num_res_blocks = 1  # residual blocks per level
  c.classifier.attn_resolutions = (4,)  # feature-map sizes that get self-attention
  c.classifier.head_channels = 16  # channels per attention head
  # GroupNorm groups: with gcd(32, 16) = 16 groups of one channel the pooled head sees
  # per-channel-normalised features and the classifier learns several times slower.
  c.classifier.num_groups = 4
  c.classifier.batch_size = 64  # global batch size
  c.classifier.num_train_steps = 1000  # train until this step
  c.classifier.learning_rate = 2e-3  # Adam learning rate
  c.classifier.log_every_steps = 100  # metrics every this many steps
  c.classifier.checkpoint_every_steps = 500  # checkpoint every this many steps (and at the end)

  # --mode=distill (cfg_jax/jobs/distill.py, cfg_jax/distillation.py): guided distillation (Meng et al. 2023) of the trained
  # model in `teacher_workdir` into <workdir>/stage1 (a w-conditioned student: one forward of
  # batch B per step at any w), then progressive distillation (Salimans & Ho 2022) with DDIM
  # into <workdir>/round_1 .. round_<rounds>, halving the steps each round. The optimizer is the
  # training section's with distill.learning_rate.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ""  # the trained model's workdir (read only)
  c.distill.teacher_step = -1  # -1 = its latest checkpoint
  c.distill.stage = 2  # 1: the w-conditioned student only; 2: then the progressive rounds
  c.distill.w_min = 0.0  # stage 1 and 2 draw w ~ U[w_min, w_max] per example
  c.distill.w_max = 4.0  # upper end of the w range the student learns
  c.distill.learning_rate = 2e-4  # Adam learning rate of every distillation phase
  c.distill.stage1_steps = 1000  # training steps of stage 1
  c.distill.round_steps = 500  # training steps of each progressive round
  # Sampler steps T (network evaluations, T - 1 DDIM moves) of the stage-1 student that round 1
  # halves: round k samples with (start_num_steps - 1) / 2**k moves; 65 -> 33, 17, 9, 5.
  c.distill.start_num_steps = 65
  c.distill.rounds = 4  # progressive rounds (stage 2), each halving the steps
  # --mode=sample / evaluate: '' = the trained model of --workdir; 'stage1' or 'round_<k>' = that
  # distilled student in <workdir>/<student> (round_<k>: DDIM eta=0 at its own step count).
  c.distill.student = ""

  # --mode=plan (cfg_jax/jobs/plan.py, cfg_jax/planning.py): compile the config's programs ahead
  # of time with the TPU compiler (libtpu, `pip install 'cfg_jax[tpu-plan]'`) for a named slice,
  # from shapes only, on any host; per-chip HBM, FLOPs and a roofline estimate to <workdir>/plan.json.
  c.plan = ml_collections.ConfigDict()
  c.plan.topology = ""  # e.g. v5e:16x16, v4:2x2x1, v5p:4x4x4, v6e:4x4 (chips per dimension)
  c.plan.num_slices = 1  # slices joined over the data-center network (the data axis spans them)
  c.plan.programs = ("train", "sample", "features")  # which programs to compile
  c.plan.search_batch = False  # also find the largest per-chip train batch that fits
  # Also compile the sampling step with the EMA params fsdp-sharded, beside the replicated params
  # that sampling and evaluation use (their per-chip cost).
  c.plan.sharded_params = False
  return c
