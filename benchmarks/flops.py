"""Model FLOPs of one train step, counted analytically from the architecture.

Counting convention (the one MFU is computed with):

- Only matrix products count: the patch embedding (a matmul over p*p*3 inputs per patch), the q/k/v/out and
  MLP projections, LoRA's two factors, attention scores Q.K^T and values P.V (full S x S, also for the causal
  text tower, as XLA and cuDNN without a causal skip compute it), the image and text projections, the phase-1
  logits against 2C text features and the phase-2 head. A product of an [m, k] and a [k, n] operand is 2*m*k*n
  FLOPs. LayerNorm, softmax, activations, residual adds, the losses and the optimiser update are not counted.
- The sequence length includes the class token and the VPT tokens (1 + patches + vpt_tokens). The phase-1
  text pass (deft_jax/models/text_prefix.py) runs the prompts' shared prefix of P tokens once per context (2
  sequences; the last layer only forms its keys and values), then each class's suffix, padded to its length
  bucket's S tokens, whose queries attend to the P prefix keys and the S suffix keys (a [S, P] and an [S, S]
  product per head); its last layer forms the S keys and values but runs the rest for the end-of-text token
  alone (the one the features read; not under scan). With prefix sharing off it runs 2C whole prompts of the
  template's length T.
- Backward: each operand of a product that needs a gradient costs one more forward-sized product (dX for an
  activation that depends on a trainable parameter, dW for a trainable weight). So a product on a fully
  trainable path counts 3x its forward FLOPs (the usual "6N per token"), a frozen weight whose input needs a
  gradient 2x (dX only: phase 1 never forms gradients of the frozen CLIP weights), and a product with no
  trainable parameter upstream 1x (the patch embedding in both phases). This is ``model_flops``: exactly the
  matmul FLOPs of the lowered JAX step (``lowered_matmul_flops``, checked in the tests) and of one PyTorch
  peer step (torch's flop counter), and XLA's ``cost_analysis`` minus its element-wise work.
- ``model_flops_3x`` is the coarser "forward x3 on every product the gradient passes through" count (frozen
  weights' dW included). It equals ``model_flops`` for phase-2 FFT but for frozen-backbone phase 1 it counts
  work that is never done; it is reported for comparison only.
- Recomputation is not model work: neither rematerialised blocks nor the S = Q.K^T that flash-attention
  kernels recompute in their backward pass count (XLA's count includes remat).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class Product:
  name: str
  forward: float  # FLOPs of the forward product
  grads: int  # how many of its two operands need a gradient (0, 1 or 2)


def _mm(name: str, m: float, k: float, n: float, *grad_flags: bool) -> Product:
  return Product(name, 2.0 * m * k * n, sum(bool(g) for g in grad_flags))


def transformer(prefix: str, *, n: int, seq: int, width: int, mlp_dim: int, layers: int, x_grad: bool,
                weights_train: bool, lora_rank: int = 0, lora_targets: Iterable[str] = (),
                prompt_grad_from_layer: int | None = None, shared_prefix: int = 0, prefix_grad: bool = False,
                kv_only_last: bool = False, pool_last: bool = False) -> tuple[list[Product], bool]:
  """Products of a pre-norm transformer over ``n`` sequences of length ``seq``.

  ``x_grad``: whether the tower's input depends on a trainable parameter. ``prompt_grad_from_layer``: VPT
  prompts (trainable) join the sequence before every layer from this one on. ``shared_prefix``: the sequences
  continue a prefix of that many tokens whose keys and values every layer also attends to (``prefix_grad``:
  they depend on a trainable parameter). ``kv_only_last``: the last layer only projects keys and values (a
  shared prefix's pass). ``pool_last``: the last layer runs for one query per sequence (the pooled token; the
  keys and values still cover all ``seq``). Returns (products, whether the output depends on a trainable
  parameter).
  """
  lora_targets = set(lora_targets) if lora_rank else set()
  tokens = n * seq
  ops: list[Product] = []
  for i in range(layers):
    p = f"{prefix}/layers_{i}"
    if prompt_grad_from_layer is not None and i >= prompt_grad_from_layer:
      x_grad = True
    # The block's LayerNorm scales train with its weights (FFT), so its normalised input then needs dX.
    h_grad = x_grad or weights_train

    # Query tokens of this layer: the pooled one per sequence in a pooled last layer, else all of them.
    q_seq = 1 if pool_last and i == layers - 1 else seq

    def proj(site, x_dep, d_in, d_out, rows=None):
      rows = n * q_seq if rows is None else rows
      ops.append(_mm(f"{p}/{site}", rows, d_in, d_out, x_dep, weights_train))
      dep = x_dep or weights_train
      if site in lora_targets:
        ops.append(_mm(f"{p}/{site}_lora_a", rows, d_in, lora_rank, x_dep, True))
        ops.append(_mm(f"{p}/{site}_lora_b", rows, lora_rank, d_out, True, True))
        dep = True
      return dep

    if kv_only_last and i == layers - 1:
      proj("k", h_grad, width, width)
      proj("v", h_grad, width, width)
      break
    q = proj("q", h_grad, width, width)
    k = proj("k", h_grad, width, width, rows=tokens)
    v = proj("v", h_grad, width, width, rows=tokens)
    if shared_prefix:
      ops.append(Product(f"{p}/prefix_scores", 2.0 * n * q_seq * shared_prefix * width, int(q) + int(prefix_grad)))
    # Scores: [q_seq, head_dim] x [head_dim, seq] per head and sequence = 2 * n * q_seq * seq * width in all.
    ops.append(Product(f"{p}/scores", 2.0 * n * q_seq * seq * width, int(q) + int(k)))
    probs = q or k or (bool(shared_prefix) and prefix_grad)
    if shared_prefix:
      ops.append(Product(f"{p}/prefix_values", 2.0 * n * q_seq * shared_prefix * width,
                         int(probs) + int(prefix_grad)))
    ops.append(Product(f"{p}/values", 2.0 * n * q_seq * seq * width, int(probs) + int(v)))
    attn = probs or v or (bool(shared_prefix) and prefix_grad)
    out = proj("out", attn, width, width)
    x_grad = x_grad or out
    fc1 = proj("fc1", x_grad or weights_train, width, mlp_dim)
    fc2 = proj("fc2", fc1, mlp_dim, width)
    x_grad = x_grad or fc2
  return ops, x_grad


def _vision(cfg, batch: int, *, vpt_tokens: int, **kw) -> tuple[list[Product], bool]:
  v = cfg.vision
  patches = (v.image_size // v.patch_size) ** 2
  ops = [_mm("vision/patch_embedding", batch * patches, v.patch_size * v.patch_size * 3, v.width)]
  tower, dep = transformer("vision", n=batch, seq=1 + patches + vpt_tokens, width=v.width, mlp_dim=v.mlp_dim,
                           layers=v.layers, **kw)
  return ops + tower, dep


@dataclasses.dataclass(frozen=True)
class TextPass:
  """The phase-1 text pass per context: a shared prefix of ``prefix`` tokens (0: none, whole prompts of
  ``length`` tokens), suffix ``buckets`` of (classes, padded length), and whether the prefix / the suffixes
  hold learned context vectors (the gradient reaches them)."""

  length: int
  prefix: int = 0
  buckets: tuple[tuple[int, int], ...] = ()
  prefix_grad: bool = True
  suffix_grad: bool = False
  pooled: bool = True  # the suffixes' last layer runs for the end-of-text token only (not under scan)


def text_products(cfg, text: TextPass, *, num_classes: int, contexts: int = 2) -> list[Product]:
  t = cfg.text
  dims = dict(width=t.width, mlp_dim=t.mlp_dim, layers=t.layers, weights_train=False)
  if not text.prefix:  # the context vectors are the text tower's input
    return transformer("text", n=contexts * num_classes, seq=text.length, x_grad=True, **dims)[0]
  ops, _ = transformer("text/prefix", n=contexts, seq=text.prefix, x_grad=text.prefix_grad, kv_only_last=True,
                       **dims)
  for i, (n, s) in enumerate(text.buckets):
    ops += transformer(f"text/suffix{i}", n=contexts * n, seq=s, x_grad=text.suffix_grad,
                       shared_prefix=text.prefix, prefix_grad=text.prefix_grad, pool_last=text.pooled,
                       **dims)[0]
  return ops


def phase1(cfg, *, batch: int, num_classes: int, text_len: int = 0, vpt_tokens: int = 0, lora_rank: int = 0,
           lora_targets=("q", "v"), text: TextPass | None = None) -> list[Product]:
  """The DEFT detector step: prompts (and VPT / LoRA) train, every CLIP weight is frozen. ``text``: the text
  pass (default: 2C whole prompts of ``text_len`` tokens, the path without prefix sharing)."""
  ops, img_dep = _vision(cfg, batch, vpt_tokens=vpt_tokens, x_grad=False, weights_train=False,
                         lora_rank=lora_rank, lora_targets=lora_targets,
                         prompt_grad_from_layer=0 if vpt_tokens else None)
  ops.append(_mm("vision/projection", batch, cfg.vision.width, cfg.embed_dim, img_dep, False))
  t = cfg.text
  n_text = 2 * num_classes
  ops += text_products(cfg, text or TextPass(text_len), num_classes=num_classes)
  ops.append(_mm("text/projection", n_text, t.width, cfg.embed_dim, True, False))
  ops.append(_mm("logits/positive", batch, cfg.embed_dim, num_classes, img_dep, True))
  ops.append(_mm("logits/negative", batch, cfg.embed_dim, num_classes, False, True))  # stop-gradient image
  return ops


def phase2_fft(cfg, *, batch: int, num_classes: int) -> list[Product]:
  """The reference FFT step: the vision blocks and a new head train; embeddings and LayerNorms around are frozen."""
  ops, dep = _vision(cfg, batch, vpt_tokens=0, x_grad=False, weights_train=True)
  ops.append(_mm("head", batch, cfg.vision.width, num_classes, dep, True))
  return ops


def total(ops: Iterable[Product]) -> float:
  """``model_flops``: forward plus one forward-sized product per operand that needs a gradient."""
  return sum(p.forward * (1 + p.grads) for p in ops)


def total_3x(ops: Iterable[Product]) -> float:
  """The coarse convention: 3x forward for every product on the gradient path, 1x off it."""
  return sum(p.forward * (3 if p.grads else 1) for p in ops)


def forward(ops: Iterable[Product]) -> float:
  return sum(p.forward for p in ops)


def step_products(step: str, cfg, *, batch: int, num_classes: int, text_len: int = 0, vpt_tokens: int = 20,
                  lora_rank: int = 8, text: TextPass | None = None) -> list[Product]:
  if step == "phase2_fft":
    return phase2_fft(cfg, batch=batch, num_classes=num_classes)
  if step == "phase1_vpt_deep":
    return phase1(cfg, batch=batch, num_classes=num_classes, text_len=text_len, vpt_tokens=vpt_tokens, text=text)
  if step == "phase1_lora":
    return phase1(cfg, batch=batch, num_classes=num_classes, text_len=text_len, lora_rank=lora_rank, text=text)
  raise ValueError(f"unknown step {step!r}")


# ------------------------------------------------------------------------------- counting in lowered code
_TENSOR = re.compile(r"tensor<((?:\d+x)*)[a-z]\w*>")


def _dims(type_text: str) -> list[list[int]]:
  return [[int(d) for d in m.group(1).split("x") if d] for m in _TENSOR.finditer(type_text)]


def _line_flops(line: str) -> float:
  if "stablehlo.dot_general" in line:
    contract = re.search(r"contracting_dims = \[([\d, ]*)\]", line)
    shapes = _dims(line[line.rindex(" : ("):])
    if contract is None or len(shapes) < 3:
      raise ValueError(f"cannot parse {line.strip()[:200]}")
    lhs, out = shapes[0], shapes[-1]
    k = math.prod(lhs[int(i)] for i in contract.group(1).split(",") if i.strip())
    return 2.0 * math.prod(out) * k
  if "stablehlo.convolution" in line:
    dn = re.search(r"dim_numbers = \[[^\]]*\]x\[([^\]]*)\]->", line)
    shapes = _dims(line[line.rindex(" : ("):])
    groups = re.search(r"batch_group_count = (\d+)", line)
    if dn is None or len(shapes) < 3 or (groups and int(groups.group(1)) != 1):
      raise ValueError(f"cannot parse {line.strip()[:200]}")
    rhs_layout = [s.strip() for s in dn.group(1).split(",")]
    rhs, out = shapes[1], shapes[-1]
    # Kernel elements per output feature (spatial x input features; already per group when grouped).
    per_output = math.prod(rhs) / rhs[rhs_layout.index("o")]
    return 2.0 * math.prod(out) * per_output
  return 0.0


def lowered_matmul_flops(stablehlo_text: str) -> float:
  """FLOPs of every dot_general / convolution in a lowered (StableHLO) module, following function calls.

  The same 2*m*k*n convention as above, read off what JAX actually emitted (before XLA's optimisations):
  for a step without scan (loop bodies would count once) and without remat (recomputation counts), it
  should equal the analytic ``total`` exactly.
  """
  funcs: dict[str, tuple[float, list[str]]] = {}
  name, own, calls = None, 0.0, []
  depth, loop_depth = 0, None
  for line in stablehlo_text.splitlines():
    m = re.match(r"\s*func\.func (?:public |private )?@([\w.$-]+)", line)
    if m:
      if name is not None:
        funcs[name] = (own, calls)
      name, own, calls = m.group(1), 0.0, []
      continue
    if "stablehlo.while" in line and loop_depth is None:
      loop_depth = depth
    depth += line.count("{") - line.count("}")
    f = _line_flops(line)
    if f and loop_depth is not None:
      raise ValueError("a matmul inside a loop (scan?): its body would be counted once")
    if loop_depth is not None and depth <= loop_depth:
      loop_depth = None
    own += f
    calls += re.findall(r"call @([\w.$-]+)", line)
  if name is not None:
    funcs[name] = (own, calls)

  memo: dict[str, float] = {}

  def total_of(f: str) -> float:
    if f not in memo:
      o, cs = funcs.get(f, (0.0, []))
      memo[f] = o + sum(total_of(c) for c in cs)
    return memo[f]

  return total_of("main")
