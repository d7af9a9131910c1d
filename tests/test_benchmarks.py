"""The benchmark harness: FLOP counting, the JSON records of both frameworks, failure handling, the PyTorch
peer's parity with deft_jax, import hygiene (no TF / clu / ml_collections on the GPU path), the summaries."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, flops, harness, profile_summary, summarize
from deft_jax.models import presets

REPO = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
FIELDS = ("framework", "step", "model", "image_size", "batch", "dtype", "attention", "remat", "images_per_s",
          "step_time_s", "compile_s", "model_flops", "mfu", "peak_memory_bytes", "device", "versions")
# XLA's cost analysis counts element-wise work and the optimiser update on top of the matmuls. On the tiny
# preset (width 32) that is 16-20 % of the matmul FLOPs (measured); on ViT-B/16 it is a few percent.
XLA_FLOPS_RATIO_TINY = (1.0, 1.4)
# Names that must never be imported on the benchmark path: the GPU machine has no TF, clu or ml_collections.
# What a bare JAX GPU machine lacks (TensorFlow, CLU; ml_collections is one small wheel to carry) and the product
# modules that need them: the benchmarks time the product's own steps without any of these.
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "deft_jax.data.pipeline", "deft_jax.data.datasets",
           "deft_jax.detect.train", "deft_jax.adapt.train", "deft_jax.classify.fit", "deft_jax.loop", "deft_jax.run")


# ------------------------------------------------------------------------------------------ FLOP counting
@pytest.mark.parametrize("step, sharing", [(s, True) for s in common.STEPS] + [("phase1_vpt_deep", False)])
def test_analytic_flops_equal_the_matmul_flops_of_the_lowered_step(step, sharing):
  from benchmarks import jax_steps

  # Phase 1's text pass: the shared prompt prefix once per context plus suffix buckets, or (sharing off) whole
  # prompts. The class names give suffixes of 3 and 4 tokens: two buckets.
  cfg = common.BenchConfig(framework="jax", step=step, model="tiny", batch=4, dtype="float32", num_classes=10,
                           n_ctx=4, vpt_tokens=5, lora_rank=2, text_prefix_sharing=sharing)
  built = jax_steps.build(cfg)
  if step.startswith("phase1"):
    assert (built.text.prefix, len(built.text.buckets)) == ((5, 2) if sharing else (0, 0))
  lowered = built.step.lower(built.state, built.batch)
  ops = flops.step_products(step, built.config, batch=4, num_classes=10, text_len=built.text_len, vpt_tokens=5,
                            lora_rank=2, text=built.text)
  assert flops.lowered_matmul_flops(lowered.as_text()) == flops.total(ops)


def test_vit_b16_fft_count_is_three_times_the_usual_forward_count():
  cfg = presets.get_preset("vit_b16")
  s, d, m = 197, 768, 3072
  layer = 2 * s * (4 * d * d + 2 * d * m) + 2 * 2 * s * s * d
  patch = 2 * 196 * (16 * 16 * 3) * d
  head = 2 * d * 100
  assert flops.total(flops.phase2_fft(cfg, batch=1, num_classes=100)) == patch + 3 * (12 * layer + head)
  assert 35.0e9 < patch + 12 * layer < 35.4e9  # ViT-B/16's well-known 17.6 GMACs (2 FLOPs each) forward


def test_phase1_count_has_no_weight_gradients_of_the_frozen_backbone():
  cfg = presets.get_preset("vit_b16")
  ops = flops.phase1(cfg, batch=64, num_classes=100, text_len=22, vpt_tokens=20)
  # Frozen projections carry dX only (2x); attention products of prompt-dependent activations 3x.
  grads = {p.name: p.grads for p in ops}
  assert grads["vision/patch_embedding"] == 0
  assert grads["vision/layers_0/q"] == 1 and grads["vision/layers_0/scores"] == 2
  assert grads["text/layers_11/fc2"] == 1 and grads["logits/negative"] == 1
  assert flops.total(ops) < flops.total_3x(ops) < 1.5 * flops.total(ops)
  lora = {p.name: p.grads for p in flops.phase1(cfg, batch=64, num_classes=100, text_len=22, lora_rank=8)}
  assert lora["vision/layers_0/k"] == 0  # nothing upstream of the first block trains
  assert lora["vision/layers_0/scores"] == 1 and lora["vision/layers_0/q_lora_b"] == 2


def test_lowered_matmul_flops_counts_dots_and_convolutions_through_calls():
  def f(x, w, k, img):
    y = jax.jit(lambda a, b: jnp.einsum("btd,de->bte", a, b))(x, w)  # a nested call
    z = jax.lax.conv_general_dilated(img, k, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.sum() + z.sum()

  args = (jnp.ones((2, 5, 4)), jnp.ones((4, 6)), jnp.ones((4, 4, 3, 7)), jnp.ones((2, 8, 8, 3)))
  text = jax.jit(f).lower(*args).as_text()
  assert flops.lowered_matmul_flops(text) == 2 * 2 * 5 * 4 * 6 + 2 * (2 * 2 * 2 * 7) * (4 * 4 * 3)


# ------------------------------------------------------------------------------------------- the harness
def _blocking_site(tmp_path: Path) -> str:
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  lines = ["import sys"] + [f"sys.modules[{m!r}] = None" for m in BLOCKED]
  (site / "sitecustomize.py").write_text("\n".join(lines) + "\n")
  return str(site)


def _run_cli(tmp_path, *args, timeout=900):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([_blocking_site(tmp_path), str(REPO)]))
  env.pop("XLA_FLAGS", None)  # the harness measures one device
  out = tmp_path / "results.jsonl"
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "harness.py"), "--out", str(out), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert printed == [json.loads(line) for line in out.read_text().splitlines()]
  return printed, proc.stderr


def test_quick_run_of_both_frameworks_prints_complete_records_with_consistent_flops(tmp_path):
  fws = "jax,torch" if HAS_TORCH else "jax"
  # The torch peer encodes every prompt whole: deft_jax does the same work with prefix sharing off (sharing on
  # is counted against the lowered step in the test above).
  recs, _ = _run_cli(tmp_path, "--quick", "--frameworks", fws, "--steps", "phase2_fft,phase1_vpt_deep", "--iters", "2",
                     "--text_prefix_sharing", "off")
  want = [("jax", "phase2_fft"), ("torch", "phase2_fft"), ("jax", "phase1_vpt_deep"), ("torch", "phase1_vpt_deep")]
  assert [(r["framework"], r["step"]) for r in recs] == [w for w in want if w[0] in fws]
  for r in recs:
    assert not r.get("error"), r
    for f in FIELDS:
      assert f in r, (f, r)
    assert r["images_per_s"] > 0 and r["step_time_s"] > 0 and np.isfinite(r["loss"])
    assert r["mfu"] is None and r["peak_tflops"] is None  # a CPU has no data-sheet peak here
  jx = {r["step"]: r for r in recs if r["framework"] == "jax"}
  th = {r["step"]: r for r in recs if r["framework"] == "torch"}
  for step in ("phase2_fft", "phase1_vpt_deep"):
    lo, hi = XLA_FLOPS_RATIO_TINY
    assert lo <= jx[step]["xla_flops_ratio"] <= hi
    assert jx[step]["lowered_matmul_flops_ratio"] == 1.0  # the analytic count is exactly what JAX emits
    assert jx[step]["compile_s"] > 0
    if not HAS_TORCH:
      continue
    # The same model FLOPs for both frameworks, and torch's own flop counter agrees with the analytic count
    # exactly: the peer does the same matmul work as deft_jax.
    assert jx[step]["model_flops"] == th[step]["model_flops"]
    assert th[step]["torch_counted_flops_ratio"] == pytest.approx(1.0, rel=1e-9)
    assert th[step]["compile_s"] is None  # torch eager compiles nothing
  assert jx["phase1_vpt_deep"]["text_len"] > 16


def test_failing_configurations_print_error_lines_and_a_failing_cudnn_request_falls_back_to_xla(capsys):
  fws = "jax,torch" if HAS_TORCH else "jax"
  assert harness.main(["--quick", "--inprocess", "--frameworks", fws, "--steps", "phase2_fft", "--attention", "cudnn",
                       "--models", "no_such_model,tiny", "--iters", "1"]) == 0
  recs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
  want = [("no_such_model", "jax", True), ("no_such_model", "torch", True), ("tiny", "jax", False),
          ("tiny", "torch", False)]
  assert [(r["model"], r["framework"], bool(r.get("error"))) for r in recs] == [
      w for w in want if w[1] in fws]
  assert "no_such_model" in recs[0]["error"] and recs[0]["error_kind"] == "error"
  jx = next(r for r in recs if r["model"] == "tiny" and r["framework"] == "jax")
  # No cuDNN on a CPU: the run goes on with XLA attention and the record says so.
  assert jx["attention"] == "xla" and jx["attention_requested"] == "cudnn"
  assert jx["variant"] == "cudnn->xla" and "cuDNN" in jx["fallback"]


def test_after_an_oom_the_larger_batches_of_the_group_are_skipped():
  class FakeRunner:
    @staticmethod
    def run(cfg, peak):
      if cfg.batch >= 16:
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.9GiB")
      return {**common.base_record(cfg), "images_per_s": 1.0}

  group = [common.BenchConfig(framework="jax", step="phase2_fft", model="tiny", batch=b) for b in (32, 8, 16)]
  recs = []
  harness.run_group(group, calibrate=False, emit=recs.append, runner=FakeRunner)
  assert [(r["batch"], r.get("error_kind")) for r in recs] == [(8, None), (16, "oom"), (32, "skipped")]


def test_a_worker_past_its_time_limit_is_stopped_and_recorded():
  group = [common.BenchConfig(framework="jax", step="phase2_fft", model="tiny", batch=b) for b in (4, 8)]
  recs = []
  harness.spawn_group(group, timeout_s=0.3, calibrate=False, emit=recs.append)
  assert [(r["batch"], r["error_kind"]) for r in recs] == [(4, "timeout"), (8, "timeout")]


def test_groups_share_everything_but_the_batch_and_follow_the_cli_order():
  args = harness.parse_args(["--frameworks", "jax,torch", "--steps", "phase2_fft,phase1_lora", "--models", "vit_b16",
                             "--attention", "xla,cudnn", "--torch_compile", "off,on"])
  groups = harness.expand(args)
  names = [(g[0].framework, g[0].step, g[0].variant) for g in groups]
  assert names == [("jax", "phase2_fft", "xla"), ("jax", "phase2_fft", "cudnn"), ("torch", "phase2_fft", "eager"),
                   ("torch", "phase2_fft", "compile"), ("jax", "phase1_lora", "xla"),
                   ("jax", "phase1_lora", "cudnn")]  # the PyTorch peer has no LoRA step
  assert [c.batch for c in groups[0]] == [64, 128, 256, 512]
  assert all(len({c.group_key() for c in g}) == 1 for g in groups)


def test_mfu_uses_the_data_sheet_peak_and_is_null_on_unknown_devices():
  rec = common.add_throughput({}, [0.5, 1.0, 2.0], batch=64, model_flops=989.4e12, model_flops_3x=989.4e12,
                              device="NVIDIA H100 80GB HBM3", dtype="bfloat16")
  assert rec["step_time_s"] == 1.0 and rec["images_per_s"] == 64 and rec["mfu"] == pytest.approx(1.0)
  assert common.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 494.7
  assert common.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert common.add_throughput({}, [1.0], batch=1, model_flops=1.0, model_flops_3x=1.0, device="cpu",
                               dtype="bfloat16")["mfu"] is None


# ------------------------------------------------------------------------- the PyTorch peer's parity
@pytest.fixture(scope="module")
def torch_mods():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_peer
  return torch, torch_peer


def _hf_state(params) -> dict:
  from deft_jax.models import clip_weights
  return clip_weights.flax_to_hf(params)


def test_torch_fft_peer_computes_the_same_logits_as_deft_jax(torch_mods):
  torch, torch_peer = torch_mods
  from deft_jax.classify.classifier import CLIPClassifier

  config = presets.get_preset("tiny")
  model = CLIPClassifier(config, 7)
  params = jax.device_get(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  peer = torch_peer.FFTModel(torch_peer.hf_config(config), 7)
  own = peer.vision.state_dict()
  state = {(k if k in own else k.removeprefix("vision_model.")): torch.from_numpy(v)
           for k, v in _hf_state({"vision_model": params["vision_model"]}).items()}
  peer.vision.load_state_dict(state, strict=True)
  with torch.no_grad():
    peer.head.weight.copy_(torch.from_numpy(np.array(params["head"]["kernel"]).T))
    peer.head.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))
  images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  want = np.asarray(model.apply({"params": params}, images))
  with torch.no_grad():
    got = peer.logits(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_torch_vpt_deep_peer_computes_the_same_logits_and_loss_as_deft_jax(torch_mods):
  torch, torch_peer = torch_mods
  from deft_jax.detect import losses
  from deft_jax.models import prompts as prompts_lib
  from deft_jax.detect import step as detect_step
  from deft_jax.models import clip as clip_lib
  from deft_jax.models.peft import PEFTConfig
  from deft_jax.models.tokenizer import Tokenizer
  from deft_jax.tree import flatten, unflatten

  template = prompts_lib.build_template(common.class_names(5), Tokenizer(), n_ctx=4)
  jmodel = clip_lib.CLIP(presets.get_preset("tiny"), PEFTConfig(vpt="deep", vpt_tokens=3))
  params = {"clip": jax.jit(lambda k: clip_lib.init_params(jmodel, k))(jax.random.key(0)),
            "prompts": prompts_lib.init_prompts(jax.random.key(1), template, jmodel.config.text.width)}
  flat = flatten(params["clip"])
  vpt = np.stack([flat.pop(f"vision_model/encoder/layers_{i}/vpt_prompt") for i in range(2)])
  peer = torch_peer.VPTDeepCLIP(torch_peer.hf_config(jmodel.config), template, vpt_tokens=3)
  peer.clip.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in _hf_state(unflatten(flat)).items()},
                            strict=True)
  with torch.no_grad():
    peer.vpt.copy_(torch.from_numpy(vpt))
    peer.pos_ctx.copy_(torch.from_numpy(np.array(params["prompts"]["pos_ctx"])))
    peer.neg_ctx.copy_(torch.from_numpy(np.array(params["prompts"]["neg_ctx"])))

  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 5, 6).astype(np.int32)
  s_pos, s_neg = detect_step.logits(jmodel, params, jnp.asarray(images), template)
  with torch.no_grad():
    t_pos, t_neg = peer.logits(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(t_pos.numpy(), np.asarray(s_pos), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(t_neg.numpy(), np.asarray(s_neg), rtol=1e-4, atol=1e-4)

  key = jax.random.key(3)
  offsets = np.asarray(jax.random.randint(key, labels.shape, 1, 5))  # what complementary_labels draws
  want, aux = losses.deft_loss(s_pos, s_neg, jnp.asarray(labels), jnp.ones(6, bool), key, warmup=False,
                               pseudo_labels=True)
  got, (p_clean, selected, _, _) = torch_peer.deft_loss(t_pos, t_neg, torch.from_numpy(labels).long(),
                                                       torch.from_numpy(offsets.copy()).long())
  assert float(got) == pytest.approx(float(want), rel=1e-4)
  np.testing.assert_allclose(p_clean.numpy(), np.asarray(aux["p_clean"]), atol=1e-5)
  np.testing.assert_array_equal(selected.numpy(), np.asarray(aux["selected"]))


# ------------------------------------------------------------------------------------------ hygiene
def test_benchmark_modules_import_without_tensorflow_or_clu(tmp_path):
  code = ("import benchmarks.harness, benchmarks.run_jax, benchmarks.jax_steps, benchmarks.run_torch, "
          "benchmarks.torch_peer, benchmarks.flops, benchmarks.summarize, benchmarks.profile_summary, "
          "benchmarks.clip_forward, deft_jax.detect.step, deft_jax.models.prompts")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([_blocking_site(tmp_path), str(REPO)]))
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # ... and the block is real: the same environment cannot import a blocked module.
  blocked = subprocess.run([sys.executable, "-c", "import deft_jax.detect.train"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
  assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr


# ------------------------------------------------------------------------------------------ summaries
def _rec(fw, step, batch, ips, variant, **kw):
  r = {"framework": fw, "step": step, "model": "vit_b16", "dtype": "bfloat16", "batch": batch, "variant": variant,
       "images_per_s": ips, "step_time_s": batch / ips, "mfu": ips / 5000, "torch_compile": variant == "compile",
       "device": "NVIDIA H100 80GB HBM3", "versions": {fw: "1"}, "peak_memory_bytes": 2 ** 30}
  r.update(kw)
  return r


def test_summary_tables_give_the_jax_over_best_torch_ratio_and_list_failures(tmp_path):
  recs = [_rec("jax", "phase2_fft", 64, 2000.0, "xla"), _rec("jax", "phase2_fft", 64, 2200.0, "cudnn"),
          _rec("torch", "phase2_fft", 64, 1000.0, "eager"), _rec("torch", "phase2_fft", 64, 1600.0, "compile"),
          {**common.error_record(common.BenchConfig("jax", "phase2_fft", "vit_l14", 512), "RESOURCE_EXHAUSTED: oom",
                                 "oom")}]
  path = tmp_path / "r.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in recs) + "\nnot json\n")
  md = summarize.render(summarize.load([str(path)]))
  row = next(line for line in md.splitlines() if line.startswith("| phase2_fft | vit_b16"))
  assert "2000.0" in row and "2200.0 (cudnn)" in row and "1000.0" in row and "1600.0" in row
  assert row.rstrip(" |").endswith("1.38x")  # 2200 / 1600
  assert "| oom |" in md and "vit_l14" in md


def test_profile_summary_splits_device_time_by_kernel_category():
  torch_trace = [
      {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16bf16_bf16f32", "ts": 0, "dur": 60},
      {"ph": "X", "cat": "kernel", "name": "pytorch_flash::flash_fwd_kernel", "ts": 60, "dur": 20},
      {"ph": "X", "cat": "kernel", "name": "triton_poi_fused_add_0", "ts": 100, "dur": 20},
      {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 500},
  ]
  s = profile_summary.summarize(torch_trace, steps=1)
  assert s["time_by_category_ms_per_step"] == pytest.approx({"gemm": 0.06, "attention": 0.02, "elementwise": 0.02})
  assert s["device_busy_ms_per_step"] == pytest.approx(0.1) and s["device_idle_fraction"] == pytest.approx(1 / 6)
  jax_trace = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 1, "tid": 5, "name": "thread_name", "args": {"name": "Stream #13(Compute)"}},
      {"ph": "M", "pid": 1, "tid": 6, "name": "thread_name", "args": {"name": "XLA Ops"}},
      {"ph": "X", "pid": 1, "tid": 5, "name": "nvjet_tst_128x256_64x4", "ts": 0, "dur": 10,
       "args": {"hlo_op": "custom-call.3", "tf_op": "jit(step)/vision_model/layers_0/self_attn/q_proj/dot_general"}},
      {"ph": "X", "pid": 1, "tid": 6, "name": "custom-call.3", "ts": 0, "dur": 10},  # same op, other line
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 2, "tid": 1, "name": "PjitFunction(step)", "ts": 0, "dur": 99},
  ]
  s = profile_summary.summarize(jax_trace, steps=1)
  assert s["kernels_per_step"] == 1 and s["share_by_category"] == {"gemm": 1.0}
  assert "note" in profile_summary.summarize([{"ph": "X", "name": "host only", "ts": 0, "dur": 1}])


def _strength_row(acc, label_set, method, f1, auroc, *, checkpoint=None, flagged=0.2, recipe=None):
  row = {"zero_shot_acc": acc, "checkpoint": checkpoint or f"snap{acc}", "label_set": label_set, "method": method,
         "precision": 0.9, "recall": 0.9, "f1": f1, "auroc": auroc, "flagged_fraction": flagged,
         "noise_rate": 0.25, "num_examples": 1000, "fnr_at_noise_budget": None if auroc is None else 0.3,
         "test_top1": None, "command": "x"}
  if recipe:  # rows written before the field existed have none: they ran the synthetic recipe
    row["recipe"] = recipe
  return row


def test_strength_table_takes_the_last_row_per_cell_and_measures_deft_against_the_best_baseline(tmp_path):
  from benchmarks.experiments import strong_vlm_table as table
  w = "worse_label"
  rows = [_strength_row(0.5, w, "deft", 0.70, 0.80), _strength_row(0.5, w, "small_loss", 0.75, 0.85),
          _strength_row(0.5, w, "keep_all", 0.60, None), _strength_row(0.5, w, "label_match", 0.65, 0.90),
          _strength_row(0.8, w, "deft", 0.50, 0.50),  # replaced by the next row
          _strength_row(0.8, w, "deft", 0.90, 0.95), _strength_row(0.8, w, "small_loss", 0.80, 0.85),
          _strength_row(0.8, w, "keep_all", 0.60, None)]
  f = tmp_path / "r.jsonl"
  f.write_text("".join(json.dumps(r) + "\n" for r in rows))
  loaded = table.load([f])
  assert len(loaded) == 7
  cells = table._cells(loaded)["worse_label"]
  assert list(cells) == [0.5, 0.8]
  assert table.margins(cells[0.5]) == {"f1": (pytest.approx(-0.05), "small_loss"),
                                       "auroc": (pytest.approx(-0.10), "label_match")}
  assert table.margins(cells[0.8]) == {"f1": (pytest.approx(0.10), "small_loss"),
                                       "auroc": (pytest.approx(0.10), "small_loss")}
  md = table.markdown(loaded)
  assert ("| 80.0 % | 90.0 / 0.950 |  | 80.0 / 0.850 | 60.0 / – "
          "| +10.0 (small-loss) / +0.100 (small-loss) |") in md
  assert ("| 50.0 % | 70.0 / 0.800 | 65.0 / 0.900 | 75.0 / 0.850 | 60.0 / – "
          "| -5.0 (small-loss) / -0.100 (label-match) |") in md
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{table.BEGIN}\nold\n{table.END}\nrest\n")
  table.plot(loaded, tmp_path / "p.png")
  assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
  readme.write_text(table.replace_block(readme.read_text(), md))
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith(f"{table.END}\nrest\n") and "old" not in text and md in text
  with pytest.raises(ValueError, match="no <!-- strong-vlm:begin -->"):
    table.replace_block("no markers", md)


def test_strength_table_keeps_each_recipes_deft_rows_apart_and_shares_the_baselines(tmp_path):
  """Was: rows carried no recipe, so a real-noise DEFT row replaced the synthetic one of the same cell."""
  from benchmarks.experiments import strong_vlm_table as table
  w = "worse_label"
  rows = [_strength_row(0.8, w, "deft", 0.90, 0.95, flagged=0.20),  # no recipe field: synthetic
          _strength_row(0.8, w, "small_loss", 0.80, 0.85, recipe="synthetic"),  # a baseline: any recipe
          _strength_row(0.8, w, "keep_all", 0.60, None),
          _strength_row(0.8, w, "deft", 0.70, 0.93, flagged=0.45, recipe="real_noise"),
          _strength_row(0.8, w, "deft_strict_margin", None, 0.97, flagged=None, recipe="real_noise"),
          _strength_row(0.5, w, "deft", 0.60, 0.70, recipe="real_noise")]  # no synthetic row at 0.5
  f = tmp_path / "r.jsonl"
  f.write_text("".join(json.dumps(r) + "\n" for r in rows))
  loaded = table.load([f])
  assert len(loaded) == 6 and table.recipes(loaded) == ["real_noise", "synthetic"]
  syn, real = table._cells(loaded, "synthetic")[w], table._cells(loaded, "real_noise")[w]
  assert list(syn) == [0.8] and list(real) == [0.5, 0.8]
  assert syn[0.8]["deft"]["f1"] == 0.90 and real[0.8]["deft"]["f1"] == 0.70
  assert real[0.8]["small_loss"] is syn[0.8]["small_loss"]  # the baselines do not depend on phase 1's recipe
  assert table.margins(real[0.8])["f1"] == (pytest.approx(-0.10), "small_loss")
  cmp = table.recipe_comparison(loaded)
  assert ("| `worse_label` | 80.0 % | 25.0 % | 20.0 / 45.0 | – / – | 90.0 / 70.0 | – / – | – / – | – / – "
          "| – / 0.970 |") in cmp
  assert "| `worse_label` | 50.0 % | 25.0 % | – / 20.0 |" in cmp
  doc = table.document(loaded, "p.png")
  assert doc.index("real-noise recipe (the reference") < doc.index("synthetic-noise recipe (loose") < doc.index(
      "What the real-noise recipe changes") < doc.index("![")
  table.plot(loaded, tmp_path / "p.png")
  assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_rows_score_every_method_against_the_truth_and_deft_probability_as_a_ranking(tmp_path, monkeypatch):
  from types import SimpleNamespace

  from benchmarks.experiments import strong_vlm_sweep as sweep
  from deft_jax.data import cifar_offline
  truth = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  given = np.array([0, 1, 2, 0, 1, 2, 1, 0], np.int32)  # the last two are wrong
  monkeypatch.setattr(cifar_offline, "load_cifar10n_offline", lambda *a, **k: {
      "train": SimpleNamespace(labels=given, clean_labels=truth)})
  (tmp_path / "detect").mkdir()
  (tmp_path / "baselines" / "label_match").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps({"data": {"root": "r", "train_indices": "0:8",
                                                             "pretrain_indices": "", "noise": {"type": "human"}},
                                                    "detect": {"recipe": ""}}))
  keep = np.array([1, 1, 1, 1, 0, 1, 1, 0], bool)  # flags one clean and one noisy example
  margin = np.array([5, 4, 3, 2, 1, 6, 0, -1], np.float32)  # ranks the two noisy ones lowest
  # the report's score is the run's detect.ranking (here the reverse of the margin); the "deft" rows rank by margins
  np.savez(tmp_path / "detect" / "detection.npz", is_clean=keep, margin=margin, score=-margin, pass_is_clean=keep,
           pass_margin=margin[::-1].copy(), pass_score=margin, pass_strict_margin=margin - 10)
  probs = np.full((8, 3), 0.1, np.float32)
  probs[np.arange(8), truth] = 0.8
  np.save(tmp_path / "detect" / "pred_probs.npy", probs)
  np.savez(tmp_path / "baselines" / "label_match" / "detection.npz", is_clean=given == truth,
           score=(given == truth).astype(np.float32))
  rows = {r["method"]: r for r in sweep.rows(tmp_path, zero_shot=0.5, checkpoint="c", label_set="s", cmd="x")}
  assert set(rows) == {"deft", "deft_scoring_pass", "label_match", "keep_all", "deft_label_probability",
                       "deft_strict_margin"}
  assert {r["recipe"] for r in rows.values()} == {"real_noise"}  # recipe "" with human noise: config_lib's rule
  assert rows["deft_strict_margin"]["auroc"] == 1.0 and rows["deft_strict_margin"]["f1"] is None
  d = rows["deft"]
  assert (d["precision"], d["recall"], d["auroc"], d["flagged_fraction"]) == (5 / 6, 5 / 6, 1.0, 0.25)
  assert d["noise_rate"] == 0.25 and d["fnr_at_noise_budget"] == 0.0
  reverse = rows["deft_scoring_pass"]
  assert reverse["auroc"] == pytest.approx(1 / 6) and reverse["fnr_at_noise_budget"] == 1.0
  assert rows["label_match"]["f1"] == 1.0 and rows["keep_all"]["recall"] == 1.0 and rows["keep_all"]["auroc"] is None
  p = rows["deft_label_probability"]
  assert p["f1"] is None and p["flagged_fraction"] is None and p["auroc"] == 1.0 and p["fnr_at_noise_budget"] == 0.0


def test_sweep_symmetric_cells_run_on_the_clean_labels_and_are_scored_against_the_drawn_noise(tmp_path, monkeypatch):
  from types import SimpleNamespace

  from benchmarks.experiments import strong_vlm_sweep as sweep
  args = SimpleNamespace(root="R", methods="label_match", extra=["--config.detect.negatives=hard"])
  cmd = sweep.command(args, "standin:x", "sym0.2", tmp_path)
  assert "--config=configs/cifar10n_strong_vlm.py:root=R,label_set=clean_label" in cmd
  assert {"--config.data.noise.type=sym", "--config.data.noise.ratio=0.2", "--config.detect.recipe=synthetic",
          "--config.detect.negatives=hard"} <= set(cmd)
  clean = sweep.command(args, "standin:x", "sym0", tmp_path)
  assert "label_set=clean_label" in clean[3] and not any("noise" in c for c in clean)
  assert sweep.cell("worse_label") == ("worse_label", [])
  # the truth of a synthetic cell is the run's noisy_labels.npz, not a CIFAR-10N label set
  (tmp_path / "detect").mkdir()
  truth = np.array([0, 1, 2, 0, 1, 2], np.int32)
  given = np.array([0, 1, 2, 0, 2, 1], np.int32)
  np.savez(tmp_path / "noisy_labels.npz", noisy_labels=given, clean_labels=truth)
  (tmp_path / "config.json").write_text(json.dumps({"data": {"noise": {"type": "sym"}}, "detect": {"recipe":
                                                                                                    "synthetic"}}))
  keep = np.array([1, 1, 1, 1, 0, 0], bool)
  np.savez(tmp_path / "detect" / "detection.npz", is_clean=keep, margin=keep.astype(np.float32), pass_is_clean=keep,
           pass_margin=keep.astype(np.float32))
  rows = {r["method"]: r for r in sweep.rows(tmp_path, zero_shot=0.5, checkpoint="c", label_set="sym0.2", cmd="x",
                                             variant="negatives=hard")}
  assert rows["deft"]["f1"] == 1.0 and rows["deft"]["noise_rate"] == pytest.approx(1 / 3)
  assert rows["deft"]["auroc"] == 1.0 and rows["deft"]["fnr_at_noise_budget"] == 0.0
  assert {r["variant"] for r in rows.values()} == {"negatives=hard"} and rows["deft"]["recipe"] == "synthetic"
  # the clean cell (sym0) draws no noise: its labels are CIFAR-10N's clean_label set; nothing is noisy, so AUROC and
  # the missed share at the noise budget are undefined (None)
  from deft_jax.data import cifar_offline
  (tmp_path / "noisy_labels.npz").unlink()
  (tmp_path / "config.json").write_text(json.dumps({"data": {"root": "r", "train_indices": "0:6", "pretrain_indices":
                                                             "", "noise": {"type": "none"}}, "detect": {"recipe":
                                                                                                        "synthetic"}}))
  monkeypatch.setattr(cifar_offline, "load_cifar10n_offline", lambda root, *, label_set, **k: {
      "train": SimpleNamespace(labels=truth, clean_labels=truth)} if label_set == "clean_label" else None)
  rows = {r["method"]: r for r in sweep.rows(tmp_path, zero_shot=0.5, checkpoint="c", label_set="sym0", cmd="x")}
  d = rows["deft"]
  assert d["noise_rate"] == 0.0 and d["auroc"] is None and d["fnr_at_noise_budget"] is None
  assert (d["precision"], d["recall"], d["flagged_fraction"]) == (1.0, pytest.approx(4 / 6), pytest.approx(2 / 6))


def test_false_flags_say_which_flagged_correct_labels_the_classifier_gets_wrong(tmp_path):
  from benchmarks.experiments import false_flags
  truth = np.array([0, 1, 2, 0, 1, 2], np.int32)
  given = np.array([0, 1, 2, 0, 1, 0], np.int32)  # the last is wrong
  (tmp_path / "detect").mkdir()
  (tmp_path / "baselines" / "label_match").mkdir(parents=True)
  np.savez(tmp_path / "noisy_labels.npz", noisy_labels=given, clean_labels=truth)
  keep = np.array([1, 0, 0, 1, 1, 0], bool)  # flags two correct labels (1, 2) and the wrong one
  np.savez(tmp_path / "detect" / "detection.npz", is_clean=keep, pass_is_clean=np.ones(6, bool))
  probs = np.eye(3, dtype=np.float32)[[0, 2, 2, 0, 1, 1]]  # its classifier is wrong on 1 (and on the noisy 5)
  np.save(tmp_path / "detect" / "pred_probs.npy", probs)
  np.savez(tmp_path / "baselines" / "label_match" / "detection.npz", is_clean=np.array([1, 0, 0, 0, 1, 0], bool))
  out = false_flags.false_flags(tmp_path, "sym0.2")
  assert out["online"] == {"false_flags_share_of_correct": 0.4, "classifier_wrong": 0.5, "zero_shot_wrong": 1.0}
  assert out["scoring_pass"]["false_flags_share_of_correct"] == 0.0 and out["scoring_pass"]["classifier_wrong"] is None
  assert out["classifier_wrong_on_correct"] == 0.2 and out["zero_shot_wrong_on_correct"] == 0.6


def test_standin_table_says_by_how_much_deft_trails_the_best_detector_and_compares_variants(tmp_path):
  from benchmarks.experiments import standin_table

  def row(method, f1, auroc, recipe="real_noise", variant="", label_set="worse_label"):
    return {"label_set": label_set, "method": method, "recipe": recipe, "f1": f1, "auroc": auroc,
            "flagged_fraction": 0.3, "noise_rate": 0.4, "fnr_at_noise_budget": 0.2, "auroc_swaps": 0.8,
            **({"variant": variant} if variant else {})}
  rows = [row("deft", 0.80, 0.85), row("deft_scoring_pass", 0.82, 0.86), row("deft_label_probability", None, 0.93),
          row("label_match", 0.90, 0.91, recipe=None), row("keep_all", 0.74, None, recipe=None),
          row("deft", 0.70, 0.80), row("deft", 0.81, 0.88, variant="negatives=hard")]  # the 2nd deft replaces the 1st
  # the clean labels: nothing to rank (AUROC None), keeping every label is the best clean selection
  rows += [row("deft", 0.95, None, recipe="synthetic", label_set="sym0"),
           row("keep_all", 1.0, None, recipe=None, label_set="sym0")]
  f = tmp_path / "rows.jsonl"
  f.write_text("\n".join(json.dumps(r) for r in rows))
  text = standin_table.block(standin_table.load([f]), "rows.jsonl")
  first = next(line for line in text.splitlines() if line.startswith("| CIFAR-10N `worse_label` | real_noise"))
  assert first.split(" | ")[1:] == ["real_noise", "0.900 (label-match)", "0.820 (DEFT scoring pass)", "-0.080",
                                    "0.930 (DEFT p+(label))", "0.930 (DEFT p+(label))", "+0.000 |"]
  clean = next(line for line in text.splitlines() if line.startswith("| clean labels (0 % noise) | synthetic"))
  assert clean.split(" | ")[2:] == ["1.000 (keep all)", "0.950 (DEFT)", "-0.050", "-", "-", "- |"]
  var = next(line for line in text.splitlines() if line.startswith("| `negatives=hard`"))
  assert "0.810 (0.700)" in var and "0.880 (0.800)" in var
  readme = tmp_path / "README.md"
  readme.write_text(f"a\n{standin_table.BEGIN}\nold\n{standin_table.END}\nb\n")
  standin_table.replace_block(readme, text)
  assert readme.read_text() == f"a\n{text}\nb\n"


def test_noise_kinds_split_the_mislabelled_examples_by_their_most_frequent_pairs():
  from benchmarks.experiments import ranking_by_noise_kind as kinds
  truth = np.array([0, 0, 0, 1, 2, 2, 1, 1], np.int32)
  given = np.array([1, 1, 2, 1, 2, 0, 1, 1], np.int32)  # (0 -> 1) twice, (0 -> 2) and (2 -> 0) once
  confusable, other = kinds.noise_kinds(given, truth, pairs=1)
  np.testing.assert_array_equal(confusable, [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(other, [0, 0, 1, 0, 0, 1, 0, 0])
  score = np.array([0, 0, 5, 3, 4, 1, 6, 7], np.float64)  # ranks the confusable ones lowest, one other one high
  a = kinds.split_auroc(score, given, truth, pairs=1)
  assert a["confusable"] == 1.0 and a["other"] == 0.75 and a["all"] == 0.875


# ------------------------------------------------------------------------------------------ input pipeline
def test_pipeline_stages_stop_the_products_own_pipeline_after_each_stage():
  import io

  from PIL import Image

  from benchmarks import data_throughput as dt
  from deft_jax.data import pipeline
  from deft_jax.data.splits import BytesReader, LabeledSplit

  rng = np.random.default_rng(0)
  blobs = []
  for _ in range(8):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(buf, "JPEG", quality=90)
    blobs.append(buf.getvalue())
  ids = [str(i) for i in range(8)]
  split = LabeledSplit(name="jpegs", class_names=["a"], labels=np.zeros(8, np.int32), clean_labels=None, ids=ids,
                       reader=BytesReader.from_encoded(blobs, ids))

  def first_batch(augment, upto):
    with dt.stage(upto):
      batches = pipeline.train_batches(split, global_batch_size=8, image_size=16, seed=0, epoch=0, augment=augment,
                                       process_index=0, process_count=1)
      return next(batches)

  for augment in ("resize_crop", "cifar"):
    got = {upto: first_batch(augment, upto) for upto in dt.stages_for(augment)}
    product = first_batch(augment, "normalize")["image"]
    order = got["decode"]["index"]
    assert got["decode"]["image"].shape == (8, 30, 40, 3)
    np.testing.assert_array_equal(got["decode"]["image"][0], np.asarray(Image.open(io.BytesIO(blobs[order[0]]))))
    if augment == "resize_crop":  # the window of a 30-pixel short side: round(30 * 224 / 256) = 26
      assert got["decode_window"]["image"].shape == (8, 26, 26, 3)
    flipped, plain = got["flip"]["image"], got["crop_resize"]["image"]
    assert flipped.dtype == plain.dtype == np.uint8 and flipped.shape == (8, 16, 16, 3)
    mirrored = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p) for f, p in zip(flipped, plain)]
    assert all(np.array_equal(f, p) or m for f, p, m in zip(flipped, plain, mirrored)) and 0 < sum(mirrored) < 8
    # The last stage is the pipeline itself, and the stage before it differs by the normalisation alone.
    np.testing.assert_array_equal(got["normalize"]["image"], product)
    np.testing.assert_allclose(product, dt.preprocess.normalize(flipped).numpy(), atol=1e-6)
