"""The PyTorch peer: the same two train steps on ``transformers`` CLIP, written as a PyTorch user would.

- Phase-2 FFT: ``CLIPVisionModel`` + ``nn.Linear`` head on ``pooler_output`` (= ln_post(CLS)); only the
  encoder layers and the head train; SGD momentum 0.9, lr 5e-4, weight decay 5e-4 (coupled, as torch's SGD
  and deft_jax's optimiser both do); CE.
- Phase-1 VPT-deep: ``CLIPModel`` frozen; 20 visual prompts per encoder layer (appended after the patch tokens,
  each layer's replacing the previous layer's outputs, the first joining after ``pre_layrnorm``), CoOp dual
  prompts (2C text sequences with learned context vectors through the text tower every step), the DEFT
  losses (masked CE over C of s_pos on the selected samples + L_neg with a complementary label and pseudo
  labels, s_pos held constant and the image features detached for s_neg), per-example online records.

A small wrapper module calls the HF submodules (embeddings, encoder layers, LayerNorms, projections) in the
order the method needs instead of hooking ``forward``: explicit and friendly to ``torch.compile``. Attention is
HF's "sdpa" (PyTorch's fused scaled_dot_product_attention: flash / memory-efficient kernels on CUDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn

P_MIN = 1e-5


def hf_config(cfg) -> transformers.CLIPConfig:
  """A ``transformers.CLIPConfig`` with the architecture of a deft_jax ``CLIPConfig``."""
  v, t = cfg.vision, cfg.text
  common = dict(hidden_act=cfg.act, attention_dropout=0.0, projection_dim=cfg.embed_dim)
  vision = dict(image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.width, num_hidden_layers=v.layers,
                num_attention_heads=v.heads, intermediate_size=v.mlp_dim, layer_norm_eps=v.ln_eps, **common)
  text = dict(vocab_size=t.vocab_size, max_position_embeddings=t.context_length, hidden_size=t.width,
              num_hidden_layers=t.layers, num_attention_heads=t.heads, intermediate_size=t.mlp_dim,
              layer_norm_eps=t.ln_eps, eos_token_id=t.eos_token_id, **common)
  out = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim,
                                logit_scale_init_value=cfg.logit_scale_init)
  for c in (out, out.vision_config, out.text_config):
    c._attn_implementation = "sdpa"
  return out


def _tower(module):
  """The module holding embeddings / encoder / LayerNorms (transformers 5 puts them on the model itself,
  transformers 4 on an inner ``vision_model`` / ``text_model``)."""
  if hasattr(module, "encoder"):
    return module
  inner = getattr(module, "vision_model", None)
  return inner if inner is not None else module.text_model


def _layer(layer, x, *, causal: bool = False):
  out = layer(x, None, is_causal=True) if causal else layer(x, None)
  return out[0] if isinstance(out, tuple) else out


class FFTModel(nn.Module):
  """CLIP vision tower + linear head; ``forward`` returns the mean CE (fp32) of a batch."""

  def __init__(self, config: transformers.CLIPConfig, num_classes: int):
    super().__init__()
    self.vision = transformers.CLIPVisionModel(config.vision_config)
    self.head = nn.Linear(config.vision_config.hidden_size, num_classes)
    for name, p in self.vision.named_parameters():
      p.requires_grad_(".encoder.layers." in f".{name}")

  def logits(self, images):
    return self.head(self.vision(pixel_values=images).pooler_output).float()

  def forward(self, images, labels):
    return F.cross_entropy(self.logits(images), labels)


class VPTDeepCLIP(nn.Module):
  """Frozen CLIP + deep visual prompts + dual text prompts; ``forward`` returns (loss, per-example outputs)."""

  def __init__(self, config: transformers.CLIPConfig, template, *, vpt_tokens: int = 20):
    super().__init__()
    self.clip = transformers.CLIPModel(config)
    self.clip.requires_grad_(False)
    vc, tc = config.vision_config, config.text_config
    bound = math.sqrt(6.0 / (3 * vc.patch_size ** 2 + vc.hidden_size))
    self.vpt = nn.Parameter(torch.empty(vc.num_hidden_layers, vpt_tokens, vc.hidden_size).uniform_(-bound, bound))
    self.pos_ctx = nn.Parameter(0.02 * torch.randn(template.n_ctx, tc.hidden_size))
    self.neg_ctx = nn.Parameter(0.02 * torch.randn(template.n_ctx, tc.hidden_size))
    ctx_index = torch.as_tensor(template.ctx_index, dtype=torch.long)
    self.register_buffer("ids", torch.as_tensor(template.ids, dtype=torch.long), persistent=False)
    self.register_buffer("ctx_slot", ctx_index.clamp(min=0), persistent=False)
    self.register_buffer("is_ctx", (ctx_index >= 0)[..., None], persistent=False)
    self.register_buffer("eot", torch.as_tensor(template.eot, dtype=torch.long), persistent=False)

  def image_features(self, images):
    vt = _tower(self.clip.vision_model)
    x = vt.pre_layrnorm(vt.embeddings(images))
    n = x.shape[1]
    for i, layer in enumerate(vt.encoder.layers):
      prompts = self.vpt[i].to(x.dtype).expand(x.shape[0], -1, -1)
      x = _layer(layer, torch.cat([x[:, :n], prompts], dim=1))
    return self.clip.visual_projection(vt.post_layernorm(x[:, 0]))

  def text_features(self):
    tt = _tower(self.clip.text_model)
    tok = tt.embeddings.token_embedding(self.ids)
    pos = torch.where(self.is_ctx, self.pos_ctx[self.ctx_slot].to(tok.dtype), tok)
    neg = torch.where(self.is_ctx, self.neg_ctx[self.ctx_slot].to(tok.dtype), tok)
    t = self.ids.shape[1]
    x = torch.cat([pos, neg]) + tt.embeddings.position_embedding.weight[:t]
    for layer in tt.encoder.layers:
      x = _layer(layer, x, causal=True)
    x = tt.final_layer_norm(x)
    eot = torch.cat([self.eot, self.eot])
    return self.clip.text_projection(x[torch.arange(x.shape[0], device=x.device), eot])

  def logits(self, images):
    c = self.ids.shape[0]
    txt = F.normalize(self.text_features().float(), dim=-1)
    img = F.normalize(self.image_features(images).float(), dim=-1)
    scale = self.clip.logit_scale.float().exp()
    s_pos = scale * img @ txt[:c].T
    s_neg = scale * img.detach() @ txt[c:].T
    return s_pos, s_neg

  def forward(self, images, labels, offsets):
    """``offsets`` in [1, C): the complementary label is (label + offset) mod C (drawn by the caller)."""
    s_pos, s_neg = self.logits(images)
    return deft_loss(s_pos, s_neg, labels, offsets)


def deft_loss(s_pos, s_neg, labels, offsets):
  """DEFT's phase-1 loss after warm-up (see deft_jax.detect.losses), in float32."""
  c = s_pos.shape[-1]
  py = torch.sigmoid(s_pos.detach() - s_neg)
  p_clean = py.gather(1, labels[:, None])[:, 0]
  selected = p_clean > 0.5
  sel = selected.float()
  ce = F.cross_entropy(s_pos, labels, reduction="none")
  loss_cls = (ce * sel).sum() / sel.sum().clamp(min=1.0)
  comp = (labels + offsets) % c
  p_no = 1.0 - py.gather(1, comp[:, None])[:, 0]
  suggested = s_pos.argmax(-1)
  target = torch.where(selected, labels, suggested)
  p_yes_t = py.gather(1, target[:, None])[:, 0]
  loss_neg = -p_no.clamp(P_MIN, 1.0).log().mean() - p_yes_t.clamp(P_MIN, 1.0).log().mean()
  margin = (s_pos.gather(1, labels[:, None]) - s_neg.gather(1, labels[:, None]))[:, 0]
  return loss_cls + loss_neg, (p_clean.detach(), selected, suggested, margin.detach())
