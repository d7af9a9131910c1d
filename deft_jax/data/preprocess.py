"""Image preprocessing: CLIP eval transform (NumPy/PIL and TF) and train augmentations.

All TF functions work on one decoded uint8 [h, w, 3] image and return uint8, so
batches stay small in the prefetch buffer; `normalize` runs once per batch.

Train augmentations (`augment=`):
  "resize_crop"          resize the short side to size*256/224, random size x size
                         crop, horizontal flip. Done as one resize of the matching
                         window of the original image, which equals resize-then-crop
                         up to sub-pixel alignment and costs less.
  "squash_crop"          the reference's for Tiny-ImageNet, Cars, CUB and WebVision:
                         resize both sides to size*256/224 (a squash, aspect ratio not
                         kept), random size x size crop, flip; the same one-resize
                         window trick (a window of h*224/256 x w*224/256 pixels).
  "random_resized_crop"  Inception-style crop, scale (0.08, 1), ratio (3/4, 4/3), flip.
  "cifar"                zero-pad 4 px, random crop at the original size, resize to
                         size, flip (the reference's CIFAR recipe).
  "none"                 the eval transform (resize short side + centre crop).
Eval transforms (`eval_resize=`): "short_side" (CLIP's: bicubic resize of the
short side, centre crop); "squash" (the reference's for Tiny-ImageNet, Cars and
CUB: resize both sides to size, bilinear, no crop); "squash_center_crop" (the
reference's for WebVision and ImageNet val: Resize((256, 256)), CenterCrop(224),
bilinear) and "resize_center_crop" (Clothing1M's: Resize(256) of the short side,
CenterCrop(224), bilinear), 256 being size * 256 / 224.
train_view() takes the encoded bytes and, for JPEG crops, decodes only the crop
window (tf.io.decode_and_crop_jpeg). antialias=False skips the antialiasing
filter of the final resize: about twice the throughput, with some aliasing when
a crop shrinks by more than ~1.5x.
Randomness is stateless: the caller passes a [2] int64 seed per example, derived
from (seed, epoch, index), so a resumed epoch reproduces every crop bit for bit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from deft_jax.data._tf import tf
from deft_jax.data.config import (AUGMENTATIONS, CLIP_MEAN, CLIP_STD, DATASET_STATS, EVAL_RESIZES,  # noqa: F401
                                  RESIZE_RATIO, normalization)
from deft_jax.data.errors import DataError


# ------------------------------------------------------------------ NumPy / PIL


def _short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
  # Same arithmetic as transformers/torchvision: the long side is truncated.
  if h <= w:
    return size, int(size * w / h)
  return int(size * h / w), size


def clip_preprocess_numpy(images, size: int = 224, mean=CLIP_MEAN,
                          std=CLIP_STD) -> np.ndarray:
  """CLIP eval transform outside tf.data: bicubic short-side resize, centre crop, normalise.

  Args:
    images: uint8 [k, h, w, 3] array or a list of uint8 [h, w, 3] arrays (sizes may differ).
    size: output side.
    mean, std: per-channel statistics on the [0, 1] scale.
  Returns:
    float32 [k, size, size, 3].
  """
  out = np.empty((len(images), size, size, 3), np.float32)
  for i, img in enumerate(images):
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
      raise DataError(f"image {i}: want uint8 [h, w, 3], got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    nh, nw = _short_side_size(h, w, size)
    pil = Image.fromarray(img)
    if (nh, nw) != (h, w):
      pil = pil.resize((nw, nh), Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (nh - size) // 2, (nw - size) // 2
    out[i] = arr[top:top + size, left:left + size]
  return ((out / 255.0 - np.asarray(mean, np.float32)) /
          np.asarray(std, np.float32)).astype(np.float32)


# ------------------------------------------------------------------------- TF


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> uint8 [h, w, 3]. JPEG with the accurate IDCT (as PIL does)."""
  image = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def _resize_bicubic_uint8(image: tf.Tensor, height, width) -> tf.Tensor:
  out = tf.image.resize(image, tf.stack([height, width]), method="bicubic", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def _resize_bilinear_uint8(image: tf.Tensor, height, width, antialias: bool = True):
  """Bilinear resize; the antialiasing kernel only where the image shrinks.

  Enlarging, both give the same pixels (to 1e-4 grey levels), but the antialiased
  op is ~4x slower: it decides the speed of CIFAR's 32 -> 224 pipeline.
  """
  size = tf.stack([height, width])
  plain = lambda: tf.image.resize(image, size, method="bilinear", antialias=False)
  if antialias:
    shape = tf.shape(image)
    shrinks = tf.logical_or(shape[0] > height, shape[1] > width)
    out = tf.cond(shrinks, lambda: tf.image.resize(image, size, method="bilinear",
                                                   antialias=True), plain)
  else:
    out = plain()
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def _resize_then_centre_crop(image: tf.Tensor, size: int, squash: bool) -> tf.Tensor:
  """torchvision's Resize((s, s)) (``squash``) or Resize(s) (the short side, the long one truncated), bilinear,
  then CenterCrop(size) (offset round((side - size) / 2)), with s = round(size * 256 / 224)."""
  big = int(round(size * RESIZE_RATIO))
  shape = tf.shape(image)
  hf, wf = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  if squash:
    nh = nw = tf.constant(big, tf.int32)
  else:
    nh = tf.where(hf <= wf, big, tf.cast(tf.math.floor(big * hf / wf), tf.int32))
    nw = tf.where(hf <= wf, tf.cast(tf.math.floor(big * wf / hf), tf.int32), big)
  image = _resize_bilinear_uint8(image, nh, nw)
  top = tf.cast(tf.round(tf.cast(nh - size, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(nw - size, tf.float32) / 2), tf.int32)
  image = image[top:top + size, left:left + size]
  image.set_shape([size, size, 3])
  return image


def eval_transform(image: tf.Tensor, size: int, resize: str = "short_side") -> tf.Tensor:
  """uint8 -> uint8 [size, size, 3]: "short_side" = bicubic resize of the short side to `size`, then centre
  crop; "squash" = bilinear resize of both sides to `size` (torchvision's Resize((size, size)));
  "squash_center_crop" / "resize_center_crop" = Resize((256, 256)) / Resize(256), then CenterCrop(size)."""
  if resize == "squash":
    image = _resize_bilinear_uint8(image, size, size)
    image.set_shape([size, size, 3])
    return image
  if resize in ("squash_center_crop", "resize_center_crop"):
    return _resize_then_centre_crop(image, size, squash=resize == "squash_center_crop")
  if resize != "short_side":
    raise DataError(f"unknown eval_resize {resize!r}; known: {EVAL_RESIZES}")
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  # int() truncation of size * long / short, as in clip_preprocess_numpy.
  nh = tf.where(h <= w, size, tf.cast(tf.math.floor(size * hf / wf), tf.int32))
  nw = tf.where(h <= w, tf.cast(tf.math.floor(size * wf / hf), tf.int32), size)
  image = tf.cond(
      tf.logical_and(tf.equal(nh, h), tf.equal(nw, w)),
      lambda: image,
      lambda: _resize_bicubic_uint8(image, nh, nw))
  top, left = (nh - size) // 2, (nw - size) // 2
  image = image[top:top + size, left:left + size]
  image.set_shape([size, size, 3])
  return image


def _uniform_int(seed, maxval) -> tf.Tensor:
  """An int in [0, maxval] (inclusive), stateless."""
  return tf.random.stateless_uniform([], seed, 0, maxval + 1, dtype=tf.int32)


def _flip(image, seed):
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


def _crop_window(shape, augment: str, seed, resize_ratio: float):
  """(begin [y, x, 0], size [h, w, -1]) of the random crop, from the image shape only."""
  h, w = shape[0], shape[1]
  if augment == "squash_crop":
    # A size x size crop of the image squashed to size*ratio on both sides, in original pixels.
    ch = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) / resize_ratio), tf.int32), 1)
    cw = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) / resize_ratio), tf.int32), 1)
    oy_seed, ox_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    oy, ox = _uniform_int(oy_seed, h - ch), _uniform_int(ox_seed, w - cw)
    return tf.stack([oy, ox, 0]), tf.stack([ch, cw, -1])
  if augment == "resize_crop":
    # The crop is size/(size*ratio) of the short side in original pixels.
    side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) / resize_ratio), tf.int32)
    side = tf.maximum(side, 1)
    oy_seed, ox_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    oy, ox = _uniform_int(oy_seed, h - side), _uniform_int(ox_seed, w - side)
    return tf.stack([oy, ox, 0]), tf.stack([side, side, -1])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.stack([h, w, 3]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin, size


def _finish_crop(crop, size, flip_seed, antialias):
  out = _flip(_resize_bilinear_uint8(crop, size, size, antialias), flip_seed)
  out.set_shape([size, size, 3])
  return out


def train_transform(image: tf.Tensor, size: int, augment: str, seed: tf.Tensor,
                    resize_ratio: float = RESIZE_RATIO, antialias: bool = True,
                    eval_resize: str = "short_side") -> tf.Tensor:
  """One train view of a decoded uint8 [h, w, 3] image; `seed` is a [2] int64 tensor. augment="none" is the
  eval transform (``eval_resize``)."""
  if augment == "none":
    return eval_transform(image, size, eval_resize)
  if augment not in AUGMENTATIONS:
    raise DataError(f"unknown augment {augment!r}; known: {AUGMENTATIONS}")
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if augment == "cifar":
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    oy_seed, ox_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, 2))
    oy, ox = _uniform_int(oy_seed, 8), _uniform_int(ox_seed, 8)
    image = padded[oy:oy + h, ox:ox + w]
    image = tf.cond(
        tf.logical_and(tf.equal(h, size), tf.equal(w, size)),
        lambda: image, lambda: _resize_bilinear_uint8(image, size, size, antialias))
    image = _flip(image, flip_seed)
    image.set_shape([size, size, 3])
    return image
  begin, crop = _crop_window(tf.shape(image), augment, crop_seed, resize_ratio)
  return _finish_crop(tf.slice(image, begin, crop), size, flip_seed, antialias)


def train_view(encoded: tf.Tensor, size: int, augment: str, seed: tf.Tensor,
               resize_ratio: float = RESIZE_RATIO, antialias: bool = True,
               eval_resize: str = "short_side") -> tf.Tensor:
  """train_transform from encoded bytes; JPEG crops decode only their window (faster).

  The window depends on the image shape and the seed only, so the result equals
  train_transform(decode(encoded), ...) up to JPEG chroma rounding at the window edge.
  """
  if augment not in ("resize_crop", "squash_crop", "random_resized_crop"):
    return train_transform(decode(encoded), size, augment, seed, resize_ratio, antialias, eval_resize)
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def jpeg():
    begin, crop = _crop_window(tf.image.extract_jpeg_shape(encoded), augment, crop_seed,
                               resize_ratio)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    return tf.io.decode_and_crop_jpeg(encoded, window, channels=3,
                                      dct_method="INTEGER_ACCURATE")

  def other():
    image = decode(encoded)
    begin, crop = _crop_window(tf.shape(image), augment, crop_seed, resize_ratio)
    return tf.slice(image, begin, crop)

  crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  crop.set_shape([None, None, 3])
  return _finish_crop(crop, size, flip_seed, antialias)


def normalize(images: tf.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> tf.Tensor:
  """uint8 [..., 3] -> float32 (x / 255 - mean) / std."""
  scale = tf.constant([1.0 / (255.0 * s) for s in std], tf.float32)
  shift = tf.constant([m / s for m, s in zip(mean, std)], tf.float32)
  return tf.cast(images, tf.float32) * scale - shift


def clip_preprocess_tf(encoded_or_decoded: tf.Tensor, size: int = 224,
                       mean=CLIP_MEAN, std=CLIP_STD) -> tf.Tensor:
  """TF twin of clip_preprocess_numpy for one image (encoded bytes or uint8 [h,w,3])."""
  image = encoded_or_decoded
  if image.dtype == tf.string:
    image = decode(image)
  return normalize(eval_transform(image, size), mean, std)
