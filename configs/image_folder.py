r"""Your own images: `root/<class name>/*.jpg` (or a CSV of path,label with data.source=csv).

Folder names become class names ("_" -> " "), so name folders as a person would describe the class; or give
`class_names_file` (one name per line, in label order). No ground truth is needed: the report ranks every image
by how likely its label is wrong.

  python -m deft_jax.main --config configs/image_folder.py:root=/data/my_images --workdir /tmp/my_images
  python -m deft_jax.main --config configs/image_folder.py:root=/data/my_images,model=openai/clip-vit-large-patch14 \
      --workdir /tmp/my_images_l14
"""

from deft_jax.config_lib import paper_config, parse_args, runlocal


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, root="", model="openai/clip-vit-base-patch16", adapt=False)
  c = paper_config("image_folder")
  c.data.root = a["root"]
  c.model.checkpoint = a["model"]
  # Without a test split the run stops after the report unless adaptation is asked for.
  c.stages = ("detect", "adapt", "evaluate") if a["adapt"] else ("detect",)
  return runlocal(c) if a["runlocal"] else c
