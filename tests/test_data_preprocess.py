"""CLIP preprocessing (NumPy vs transformers, TF vs NumPy), dataset statistics, augmentations."""

import numpy as np
import pytest
from PIL import Image

from deft_jax.data import cifar_offline, preprocess
from deft_jax.data._tf import tf


@pytest.fixture(scope="module")
def cifar():
  """Real CIFAR-10 train images (from the packaged demo data), uint8 [k, 32, 32, 3]."""
  split = cifar_offline.load_demo(label_set="clean_label")["train"]
  return split.load_images(np.arange(12))


def _sizes(images, hw):
  return [np.asarray(Image.fromarray(x).resize((hw[1], hw[0]), Image.BICUBIC)) for x in images]


@pytest.mark.parametrize("hw", [None, (224, 224), (37, 53), (500, 375)])
def test_numpy_clip_preprocess_equals_transformers_clip_image_processor(cifar, hw):
  from transformers import CLIPImageProcessor  # pylint: disable=g-import-not-at-top
  images = list(cifar) if hw is None else _sizes(cifar, hw)
  ref = CLIPImageProcessor()(images=images, return_tensors="np")["pixel_values"]
  ours = preprocess.clip_preprocess_numpy(images, 224)
  # Same PIL resize and crop arithmetic: equal up to float rounding.
  np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize("hw", [None, (37, 53), (500, 375)])
def test_tf_clip_preprocess_is_close_to_numpy(cifar, hw):
  images = list(cifar) if hw is None else _sizes(cifar, hw)
  ours = preprocess.clip_preprocess_numpy(images, 224)
  tf_out = np.stack([preprocess.clip_preprocess_tf(tf.constant(x), 224).numpy() for x in images])
  # TF's bicubic kernel and PIL's fixed-point one differ by a few grey levels at
  # most (0.15 in normalised units is ~10/255, seen only at 7x upscaling edges).
  diff = np.abs(tf_out - ours)
  assert diff.max() < 0.15 and diff.mean() < 0.005


def test_tf_decode_equals_pil_on_real_jpegs():
  split = cifar_offline.load_demo()["test"]
  import io  # pylint: disable=g-import-not-at-top
  for i in range(5):
    raw = split.reader.read(i)
    ref = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    np.testing.assert_array_equal(preprocess.decode(tf.constant(raw)).numpy(), ref)


def test_cifar10_statistics_match_the_real_images():
  split = cifar_offline.load_demo()["pretrain"]  # 5,000 real train images
  images = split.load_images(np.arange(split.num_examples)) / 255.0
  mean, std = preprocess.DATASET_STATS["cifar10"]
  np.testing.assert_allclose(images.mean((0, 1, 2)), mean, atol=0.01)
  np.testing.assert_allclose(images.std((0, 1, 2)), std, atol=0.01)


def test_normalize_matches_the_formula():
  x = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
  got = preprocess.normalize(tf.constant(x)).numpy()
  want = (x / 255.0 - np.array(preprocess.CLIP_MEAN)) / np.array(preprocess.CLIP_STD)
  np.testing.assert_allclose(got, want, atol=1e-5)


def _is_window(out, src):
  """Whether `out` (or its mirror) is a contiguous window of `src`."""
  s = out.shape[0]
  for cand in (out, out[:, ::-1]):
    for y in range(src.shape[0] - s + 1):
      for x in range(src.shape[1] - s + 1):
        if np.array_equal(src[y:y + s, x:x + s], cand):
          return True
  return False


def _unique_image(h, w):
  rng = np.random.default_rng(1)
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_crop_takes_a_224_of_256_window_of_the_short_side():
  src = _unique_image(64, 80)
  # short side 64 -> "resize 64" + crop 56: a 56 px window of the original, no resize.
  for k in range(4):
    out = preprocess.train_transform(tf.constant(src), 56, "resize_crop",
                                     tf.constant([k, 3], tf.int64), resize_ratio=64 / 56).numpy()
    assert out.shape == (56, 56, 3) and _is_window(out, src)


def test_cifar_augment_is_a_window_of_the_zero_padded_image():
  src = _unique_image(32, 32)
  padded = np.pad(src, [(4, 4), (4, 4), (0, 0)])
  outs = [preprocess.train_transform(tf.constant(src), 32, "cifar",
                                     tf.constant([k, 0], tf.int64)).numpy() for k in range(6)]
  assert all(_is_window(o, padded) for o in outs)
  assert len({o.tobytes() for o in outs}) > 1  # the seed moves the crop


def test_random_resized_crop_is_stateless_and_varies_with_the_seed():
  src = tf.constant(_unique_image(48, 40))
  f = lambda k: preprocess.train_transform(src, 24, "random_resized_crop",
                                           tf.constant([k, 9], tf.int64)).numpy()
  np.testing.assert_array_equal(f(1), f(1))
  assert len({f(k).tobytes() for k in range(5)}) == 5
  assert f(1).shape == (24, 24, 3) and f(1).dtype == np.uint8


def test_augment_none_is_the_eval_transform():
  src = tf.constant(_unique_image(40, 30))
  np.testing.assert_array_equal(
      preprocess.train_transform(src, 24, "none", tf.constant([0, 0], tf.int64)).numpy(),
      preprocess.eval_transform(src, 24).numpy())


def test_normalization_lookup_and_errors():
  assert preprocess.normalization("cifar100") == ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
  assert preprocess.normalization("clip")[0] == (0.48145466, 0.4578275, 0.40821073)
  with pytest.raises(ValueError, match="unknown normalization"):
    preprocess.normalization("imagenet21k")
  with pytest.raises(ValueError, match="uint8"):
    preprocess.clip_preprocess_numpy([np.zeros((4, 4), np.uint8)], 8)


@pytest.mark.parametrize("augment", ["resize_crop", "random_resized_crop"])
def test_jpeg_window_decoding_matches_decoding_then_cropping(augment):
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(_unique_image(120, 90)).resize((150, 110)).save(buf, "JPEG", quality=95)
  raw = tf.constant(buf.getvalue())
  for k in range(4):
    seed = tf.constant([k, 7], tf.int64)
    fast = preprocess.train_view(raw, 32, augment, seed).numpy().astype(int)
    slow = preprocess.train_transform(preprocess.decode(raw), 32, augment, seed).numpy()
    # Same window and flip; only chroma upsampling at the window edge may differ.
    assert np.abs(fast - slow).mean() < 0.2  # measured <= 0.07
    assert np.abs(fast - slow).max() <= 12  # measured <= 6 grey levels


@pytest.mark.parametrize("hw,out", [((32, 32), 224), ((32, 40), 64), ((300, 200), 64)])
def test_bilinear_resize_equals_the_antialiased_one_whether_it_enlarges_or_shrinks(hw, out):
  src = tf.constant(_unique_image(*hw))
  want = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(src, [out, out], antialias=True)),
                                  0, 255), tf.uint8).numpy()
  got = preprocess._resize_bilinear_uint8(src, out, out).numpy()  # pylint: disable=protected-access
  assert np.abs(got.astype(int) - want).max() <= 1  # rounding of values within 1e-4 of .5
