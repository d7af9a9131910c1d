"""Caption templates: class names become captions for contrastive pretraining and zero-shot prompts."""

TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a pixelated photo of a {}.",
    "an image of a {}.",
)

ZERO_SHOT_TEMPLATE = "a photo of a {}."


def captions(class_names, templates=TEMPLATES) -> list[list[str]]:
  """[T][C] captions."""
  return [[t.format(name) for name in class_names] for t in templates]
