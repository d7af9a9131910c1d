"""Phase-2 alternative backbones: ResNet-50, ConvNeXt-T, ViT-B/16 (augreg) and MAE ViT-B.

  spec = get_backbone("resnet50")
  model = spec.build(num_classes, dtype=jnp.bfloat16)
  variables = load_pretrained(spec, spec.init(model, rng))      # timm/resnet50.a1_in1k by default
  logits = model.apply(variables, images, train=False)
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])  # ResNet
"""

from deft_jax.models.backbones.loading import load_pretrained, read_checkpoint, resolve_checkpoint
from deft_jax.models.backbones.registry import BACKBONES, BackboneSpec, OptimizerSpec, get_backbone

__all__ = ["BACKBONES", "BackboneSpec", "OptimizerSpec", "get_backbone", "load_pretrained",
           "read_checkpoint", "resolve_checkpoint"]
