"""Human-readable class names for prompts ("a photo of a <name>.")."""

from __future__ import annotations

import re

from deft_jax.data.errors import DataError

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")

CIFAR100 = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")

# CUB-200-2011 classes.txt folder names without the "NNN." prefix. TFDS only
# keeps a lower-cased copy per example, so the original casing lives here.
CUB200 = tuple("""
Black_footed_Albatross Laysan_Albatross Sooty_Albatross Groove_billed_Ani
Crested_Auklet Least_Auklet Parakeet_Auklet Rhinoceros_Auklet Brewer_Blackbird
Red_winged_Blackbird Rusty_Blackbird Yellow_headed_Blackbird Bobolink
Indigo_Bunting Lazuli_Bunting Painted_Bunting Cardinal Spotted_Catbird
Gray_Catbird Yellow_breasted_Chat Eastern_Towhee Chuck_will_Widow
Brandt_Cormorant Red_faced_Cormorant Pelagic_Cormorant Bronzed_Cowbird
Shiny_Cowbird Brown_Creeper American_Crow Fish_Crow Black_billed_Cuckoo
Mangrove_Cuckoo Yellow_billed_Cuckoo Gray_crowned_Rosy_Finch Purple_Finch
Northern_Flicker Acadian_Flycatcher Great_Crested_Flycatcher Least_Flycatcher
Olive_sided_Flycatcher Scissor_tailed_Flycatcher Vermilion_Flycatcher
Yellow_bellied_Flycatcher Frigatebird Northern_Fulmar Gadwall
American_Goldfinch European_Goldfinch Boat_tailed_Grackle Eared_Grebe
Horned_Grebe Pied_billed_Grebe Western_Grebe Blue_Grosbeak Evening_Grosbeak
Pine_Grosbeak Rose_breasted_Grosbeak Pigeon_Guillemot California_Gull
Glaucous_winged_Gull Heermann_Gull Herring_Gull Ivory_Gull Ring_billed_Gull
Slaty_backed_Gull Western_Gull Anna_Hummingbird Ruby_throated_Hummingbird
Rufous_Hummingbird Green_Violetear Long_tailed_Jaeger Pomarine_Jaeger Blue_Jay
Florida_Jay Green_Jay Dark_eyed_Junco Tropical_Kingbird Gray_Kingbird
Belted_Kingfisher Green_Kingfisher Pied_Kingfisher Ringed_Kingfisher
White_breasted_Kingfisher Red_legged_Kittiwake Horned_Lark Pacific_Loon Mallard
Western_Meadowlark Hooded_Merganser Red_breasted_Merganser Mockingbird Nighthawk
Clark_Nutcracker White_breasted_Nuthatch Baltimore_Oriole Hooded_Oriole
Orchard_Oriole Scott_Oriole Ovenbird Brown_Pelican White_Pelican
Western_Wood_Pewee Sayornis American_Pipit Whip_poor_Will Horned_Puffin
Common_Raven White_necked_Raven American_Redstart Geococcyx Loggerhead_Shrike
Great_Grey_Shrike Baird_Sparrow Black_throated_Sparrow Brewer_Sparrow
Chipping_Sparrow Clay_colored_Sparrow House_Sparrow Field_Sparrow Fox_Sparrow
Grasshopper_Sparrow Harris_Sparrow Henslow_Sparrow Le_Conte_Sparrow
Lincoln_Sparrow Nelson_Sharp_tailed_Sparrow Savannah_Sparrow Seaside_Sparrow
Song_Sparrow Tree_Sparrow Vesper_Sparrow White_crowned_Sparrow
White_throated_Sparrow Cape_Glossy_Starling Bank_Swallow Barn_Swallow
Cliff_Swallow Tree_Swallow Scarlet_Tanager Summer_Tanager Artic_Tern Black_Tern
Caspian_Tern Common_Tern Elegant_Tern Forsters_Tern Least_Tern
Green_tailed_Towhee Brown_Thrasher Sage_Thrasher Black_capped_Vireo
Blue_headed_Vireo Philadelphia_Vireo Red_eyed_Vireo Warbling_Vireo
White_eyed_Vireo Yellow_throated_Vireo Bay_breasted_Warbler
Black_and_white_Warbler Black_throated_Blue_Warbler Blue_winged_Warbler
Canada_Warbler Cape_May_Warbler Cerulean_Warbler Chestnut_sided_Warbler
Golden_winged_Warbler Hooded_Warbler Kentucky_Warbler Magnolia_Warbler
Mourning_Warbler Myrtle_Warbler Nashville_Warbler Orange_crowned_Warbler
Palm_Warbler Pine_Warbler Prairie_Warbler Prothonotary_Warbler Swainson_Warbler
Tennessee_Warbler Wilson_Warbler Worm_eating_Warbler Yellow_Warbler
Northern_Waterthrush Louisiana_Waterthrush Bohemian_Waxwing Cedar_Waxwing
American_Three_toed_Woodpecker Pileated_Woodpecker Red_bellied_Woodpecker
Red_cockaded_Woodpecker Red_headed_Woodpecker Downy_Woodpecker Bewick_Wren
Cactus_Wren Carolina_Wren House_Wren Marsh_Wren Rock_Wren Winter_Wren
Common_Yellowthroat""".split())

# The first WordNet lemma of ImageNet's first 50 synsets (n01440764 ...
# n01697457), which are WebVision 1.0's first 50 classes too. The same rule
# (first lemma of a synsets.txt line) names WebVision's classes, so both
# WebVision test sets prompt with the same words.
IMAGENET_FIRST50 = (
    "tench", "goldfish", "great white shark", "tiger shark", "hammerhead",
    "electric ray", "stingray", "cock", "hen", "ostrich", "brambling",
    "goldfinch", "house finch", "junco", "indigo bunting", "robin", "bulbul",
    "jay", "magpie", "chickadee", "water ouzel", "kite", "bald eagle",
    "vulture", "great grey owl", "European fire salamander", "common newt",
    "eft", "spotted salamander", "axolotl", "bullfrog", "tree frog",
    "tailed frog", "loggerhead", "leatherback turtle", "mud turtle", "terrapin",
    "box turtle", "banded gecko", "common iguana", "American chameleon",
    "whiptail", "agama", "frilled lizard", "alligator lizard", "Gila monster",
    "green lizard", "African chameleon", "Komodo dragon", "African crocodile")

_NUMBER_PREFIX = re.compile(r"^\d+[._ -]+")


def clean_name(name: str) -> str:
  """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
  name = _NUMBER_PREFIX.sub("", str(name).strip())
  return " ".join(name.replace("_", " ").split())


def clean_names(names) -> list[str]:
  """clean_name over a sequence; refuses duplicates, which break prompts."""
  out = [clean_name(n) for n in names]
  seen: dict[str, int] = {}
  for i, n in enumerate(out):
    if not n:
      raise DataError(f"class name at position {i} is empty")
    if n in seen:
      raise DataError(
          f"class names at positions {seen[n]} and {i} both read {n!r}")
    seen[n] = i
  return out


def first_lemma(synset_words: str) -> str:
  """'n01440764 tench, Tinca tinca' or 'tench, Tinca tinca' -> 'tench'."""
  text = synset_words.strip()
  if re.match(r"^n\d{8}\s", text):
    text = text.split(None, 1)[1]
  return text.split(",")[0].strip()
