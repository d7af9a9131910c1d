"""Flax CLIP against the PyTorch transformers.CLIPModel on the same random weights, PEFT at init, loader errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the parity reference (pip install -r requirements-test.txt)")
import transformers  # noqa: E402

from deft_jax.models import clip as clip_lib  # noqa: E402
from deft_jax.models import clip_weights, peft as peft_lib, presets  # noqa: E402
from deft_jax.models.tokenizer import Tokenizer  # noqa: E402
from deft_jax.models.weights import CheckpointMismatchError  # noqa: E402
from deft_jax.tree import flatten  # noqa: E402

TEXTS = [
    "a photo of a cat.",
    "A PHOTO of an Über-café, 3 dogs & 42 birds!!",  # casing, unicode, digits, punctuation
    "x",
    "a very long caption " * 40,  # over-long: truncated, end-of-text kept
]


def _hf_model(tmp_path, *, vision, text, projection_dim, seed=0):
  cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
  torch.manual_seed(seed)
  model = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():  # every tensor random, so that no wrong mapping can hide behind zeros or ones
    for name, p in model.named_parameters():
      if name.endswith("logit_scale"):
        p.fill_(np.log(1 / 0.07))
      elif "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.05 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return model


def _torch_outputs(model, images, ids):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                pixel_values=torch.from_numpy(np.transpose(images, (0, 3, 1, 2))))
  return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def _jax_outputs(ckpt, images, ids, **overrides):
  cfg = clip_weights.config_from_checkpoint(ckpt, **overrides)
  model = clip_lib.CLIP(cfg)
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  params = clip_weights.load_pretrained(ckpt, abstract, scan=cfg.scan)
  out = jax.jit(model.apply)({"params": params}, images, ids)
  return np.asarray(out["image_embeds"]), np.asarray(out["text_embeds"]), np.asarray(out["logits_per_image"])


TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=48)
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


@pytest.mark.parametrize("eos_token_id", [2, 49407], ids=["argmax_pooling", "first_eos_pooling"])
def test_tiny_clip_matches_transformers_to_1e5(tmp_path, eos_token_id):
  model = _hf_model(tmp_path, vision=TINY_VISION, text={**TINY_TEXT, "eos_token_id": eos_token_id},
                    projection_dim=16)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  ids = Tokenizer()(TEXTS)
  assert ids[3, -1] == 49407 and (ids[2, 3:] == 49407).all()  # truncated keeps EOT; short one is padded
  ref = _torch_outputs(model, images, ids)
  got = _jax_outputs(tmp_path, images, ids)
  for r, g, name in zip(ref, got, ["image_embeds", "text_embeds", "logits"]):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=name)


def test_scanned_and_rematerialised_tiny_clip_match_transformers(tmp_path):
  model = _hf_model(tmp_path, vision=TINY_VISION, text=TINY_TEXT, projection_dim=16, seed=1)
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = Tokenizer()(TEXTS[:2])
  ref = _torch_outputs(model, images, ids)
  for kw in (dict(scan=True), dict(remat=True), dict(scan=True, remat=True)):
    got = _jax_outputs(tmp_path, images, ids, **kw)
    for r, g in zip(ref, got):
      np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=str(kw))


def test_vit_b16_sized_clip_matches_transformers_to_1e4(tmp_path):
  model = _hf_model(tmp_path, vision=dict(image_size=224, patch_size=16), text={}, projection_dim=512)
  rng = np.random.default_rng(2)
  images = rng.normal(size=(2, 224, 224, 3)).astype(np.float32)
  ids = Tokenizer()(TEXTS)
  cfg = clip_weights.config_from_checkpoint(tmp_path)
  assert cfg == presets.get_preset("vit_b16").replace(text=cfg.text)  # config.json -> the ViT-B/16 preset
  ref = _torch_outputs(model, images, ids)
  got = _jax_outputs(tmp_path, images, ids)
  for r, g, name in zip(ref, got, ["image_embeds", "text_embeds", "logits"]):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=name)


def _tiny():
  return presets.get_preset("tiny")


def _apply(model, params, images, ids):
  return model.apply({"params": params}, images, ids)


def test_lora_and_residual_adapter_at_init_are_bit_identical_to_plain_model():
  """LoRA (B = 0) and the residual adapter (up = 0) start at the pretrained function; the reference's adapter
  (which replaces the MLP output) and SSF (N(1, 0.02) scale) do not: tests/test_fidelity_recipes.py."""
  cfg = _tiny()
  plain = clip_lib.CLIP(cfg)
  params = clip_lib.init_params(plain, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ids = jnp.asarray(Tokenizer()(TEXTS[:2]))
  ref = _apply(plain, params, images, ids)
  for p in (peft_lib.PEFTConfig(lora_rank=4, lora_targets=("q", "k", "v", "out", "fc1", "fc2")),
            peft_lib.PEFTConfig(adapter_dim=8, adapter_residual=True),
            peft_lib.PEFTConfig(lora_rank=2, adapter_dim=4, adapter_residual=True, partial=1)):
    model = clip_lib.CLIP(cfg, p)
    extra = clip_lib.init_params(model, jax.random.key(3))
    merged = {**flatten(extra), **flatten(params)}
    new = set(flatten(extra)) - set(flatten(params))
    assert new, p  # the PEFT really added parameters
    from deft_jax.tree import unflatten
    out = _apply(model, unflatten(merged), images, ids)
    for k in ref:
      np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]), err_msg=f"{p} {k}")


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_vpt_changes_outputs_and_prompts_receive_gradients(mode):
  cfg = _tiny()
  model = clip_lib.CLIP(cfg, peft_lib.PEFTConfig(vpt=mode, vpt_tokens=5))
  params = clip_lib.init_params(model, jax.random.key(0))
  plain = {k: v for k, v in flatten(params).items() if "vpt_prompt" not in k}
  from deft_jax.tree import unflatten
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  f_vpt = model.apply({"params": params}, images, method=clip_lib.CLIP.encode_image)
  f_plain = clip_lib.CLIP(cfg).apply({"params": unflatten(plain)}, images, method=clip_lib.CLIP.encode_image)
  assert np.abs(np.asarray(f_vpt - f_plain)).max() > 1e-3
  prompts = {k for k in flatten(params) if "vpt_prompt" in k}
  assert len(prompts) == (2 if mode == "deep" else 1)
  bound = peft_lib.vpt_init_bound(cfg.vision.patch_size, cfg.vision.width)
  for k in prompts:
    assert np.abs(flatten(params)[k]).max() <= bound

  def loss(p):
    return jnp.sum(model.apply({"params": p}, images, method=clip_lib.CLIP.encode_image) ** 2)

  grads = flatten(jax.grad(loss)(params))
  for k in prompts:
    assert np.abs(np.asarray(grads[k])).sum() > 0, k


def test_vpt_deep_scanned_equals_unscanned():
  p = peft_lib.PEFTConfig(vpt="deep", vpt_tokens=3, lora_rank=2)
  cfg = _tiny()
  model = clip_lib.CLIP(cfg, p)
  params = clip_lib.init_params(model, jax.random.key(0))
  # Make LoRA non-trivial so the test covers it too.
  flat = {k: (v + 0.1 if k.endswith("lora_b") else v) for k, v in flatten(params).items()}
  from deft_jax.tree import unflatten
  scanned = clip_lib.CLIP(cfg.replace(scan=True), p)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  a = model.apply({"params": unflatten(flat)}, images, method=clip_lib.CLIP.encode_image)
  b = scanned.apply({"params": unflatten(clip_weights.stack_layers(flat))}, images,
                    method=clip_lib.CLIP.encode_image)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  with pytest.raises(ValueError, match="scan=True needs the same PEFT"):
    clip_lib.init_params(clip_lib.CLIP(cfg.replace(scan=True), peft_lib.PEFTConfig(vpt="deep", partial=1)),
                         jax.random.key(0))


def test_text_embeddings_path_equals_ids_path():
  model = clip_lib.CLIP(_tiny())
  params = clip_lib.init_params(model, jax.random.key(0))
  ids = jnp.asarray(Tokenizer()(TEXTS))
  a = model.apply({"params": params}, ids, method=clip_lib.CLIP.encode_text)
  emb = model.apply({"params": params}, ids, method=clip_lib.CLIP.embed_tokens)
  eot = model.apply({"params": params}, ids, method=clip_lib.CLIP.eot_positions)
  # Tokens after the end-of-text position cannot matter (causal attention): truncating them changes nothing.
  t = int(eot.max()) + 1
  b = model.apply({"params": params}, emb[:, :t], eot, method=clip_lib.CLIP.encode_text_embeds)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_trimmed_caption_ids_give_the_same_text_features():
  """Tokenizer.trim_padding (used for pretraining captions and zero-shot prompts) cuts exactly after the
  latest end-of-text token, and the text tower gives the same features on the trimmed ids."""
  model = clip_lib.CLIP(_tiny())
  params = clip_lib.init_params(model, jax.random.key(1))
  tok = Tokenizer()
  ids = tok(["a photo of a cat.", "a photo of a big red fire truck on a road.", "dog"])
  trimmed = tok.trim_padding(ids)
  assert trimmed.shape == (3, len(tok.encode("a photo of a big red fire truck on a road.")) + 2)
  np.testing.assert_array_equal(trimmed, ids[:, :trimmed.shape[1]])
  assert (ids[:, trimmed.shape[1]:] == tok.pad_id).all()
  assert tok.trim_padding(ids[None]).shape == (1, *trimmed.shape)  # leading axes ([T, C, L] caption tables)
  full = model.apply({"params": params}, jnp.asarray(ids), method=clip_lib.CLIP.encode_text)
  short = model.apply({"params": params}, jnp.asarray(trimmed), method=clip_lib.CLIP.encode_text)
  np.testing.assert_allclose(np.asarray(short), np.asarray(full), rtol=1e-5, atol=1e-6)  # fp32 round-off


# ---------------------------------------------------------------------------------------------- loader errors


def _saved_tiny(tmp_path):
  _hf_model(tmp_path, vision=TINY_VISION, text=TINY_TEXT, projection_dim=16)
  from safetensors.numpy import load_file
  return load_file(str(tmp_path / "model.safetensors"))


def _init_for(tmp_path):
  cfg = clip_weights.config_from_checkpoint(tmp_path)
  return jax.eval_shape(lambda k: clip_lib.init_params(clip_lib.CLIP(cfg), k), jax.random.key(0))


def _rewrite(tmp_path, state):
  from safetensors.numpy import save_file
  save_file(state, str(tmp_path / "model.safetensors"))


def test_loader_names_the_key_with_a_wrong_shape(tmp_path):
  state = _saved_tiny(tmp_path)
  init = _init_for(tmp_path)
  state["vision_model.encoder.layers.1.mlp.fc1.weight"] = np.zeros((7, 32), np.float32)
  _rewrite(tmp_path, state)
  # Named as the file names it, both shapes in the file's layout ([out, in] for a Linear weight).
  with pytest.raises(CheckpointMismatchError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc1\.weight: the file "
                                                    r"has \(7, 32\), this model needs \(48, 32\)"):
    clip_weights.load_pretrained(tmp_path, init)


def test_loader_names_a_missing_key(tmp_path):
  state = _saved_tiny(tmp_path)
  init = _init_for(tmp_path)
  del state["text_model.final_layer_norm.bias"]
  _rewrite(tmp_path, state)
  with pytest.raises(CheckpointMismatchError, match=r"missing .*\n\s+text_model/final_layer_norm/bias"):
    clip_weights.load_pretrained(tmp_path, init)


def test_loader_names_an_unexpected_key_and_ignores_position_ids(tmp_path):
  state = _saved_tiny(tmp_path)
  init = _init_for(tmp_path)
  state["text_model.embeddings.position_ids"] = np.arange(77)[None]  # a known buffer: ignored
  _rewrite(tmp_path, state)
  clip_weights.load_pretrained(tmp_path, init)
  state["vision_model.extra_head.weight"] = np.zeros((3, 3), np.float32)
  _rewrite(tmp_path, state)
  with pytest.raises(CheckpointMismatchError, match=r"unexpected .*\n\s+vision_model/extra_head/kernel"):
    clip_weights.load_pretrained(tmp_path, init)


def test_loader_refuses_pickles_and_missing_checkpoints(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="never unpickles"):
    clip_weights.read_safetensors(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    clip_weights.resolve_checkpoint(tmp_path / "nope")


def test_loader_keeps_peft_init_and_rejects_checkpoint_of_another_preset(tmp_path):
  _saved_tiny(tmp_path)
  cfg = clip_weights.config_from_checkpoint(tmp_path)
  model = clip_lib.CLIP(cfg, peft_lib.PEFTConfig(vpt="deep", vpt_tokens=4, lora_rank=2))
  init = clip_lib.init_params(model, jax.random.key(5))
  loaded = flatten(clip_weights.load_pretrained(tmp_path, init))
  for k, v in flatten(init).items():
    if "vpt_prompt" in k or "_lora" in k:
      np.testing.assert_array_equal(loaded[k], v)
  tiny = clip_lib.CLIP(presets.get_preset("tiny"))
  other = jax.eval_shape(lambda k: clip_lib.init_params(tiny, k), jax.random.key(0))
  with pytest.raises(CheckpointMismatchError, match="another model"):
    clip_weights.load_pretrained(tmp_path, other)


def test_flax_to_hf_round_trip_loads_in_transformers(tmp_path):
  cfg = _tiny()
  model = clip_lib.CLIP(cfg)
  params = clip_lib.init_params(model, jax.random.key(0))
  clip_weights.save_hf_checkpoint(tmp_path, params, cfg)
  hf = transformers.CLIPModel.from_pretrained(tmp_path).eval()
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = Tokenizer()(TEXTS[:3])
  ref = _torch_outputs(hf, images, ids)
  out = model.apply({"params": params}, images, ids)
  np.testing.assert_allclose(np.asarray(out["logits_per_image"]), ref[2], atol=1e-4)
  assert json.loads((tmp_path / "config.json").read_text())["vision_config"]["patch_size"] == 8


@pytest.mark.parametrize("causal", [False, True])
def test_padded_attention_used_for_cudnn_equals_plain_attention(causal):
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 197, 4, 16)) for i in range(3))
  plain = clip_lib.attention(q, k, v, causal=causal, implementation=None)
  padded = clip_lib.padded_attention(q, k, v, causal=causal, implementation=None, multiple=16)
  np.testing.assert_allclose(np.asarray(padded), np.asarray(plain), atol=1e-6)
