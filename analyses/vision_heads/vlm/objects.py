"""The object vocabulary of the scenes, in one place: each object's shipped photograph, the word
its captions use, the synonyms a caption may use for it (CHAIR maps every synonym back to the
object), and the pairs that co-occur in training scenes (the language prior that makes the
model hallucinate a partner when only one of a pair is in the image)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SceneObject:
    name: str                 # canonical object name, also the caption word
    photo: str                # key in workbench.vision.images.SHIPPED
    synonyms: tuple[str, ...]  # other words (singular and plural) that mean this object


OBJECTS: tuple[SceneObject, ...] = (
    SceneObject("cat", "chelsea", ("cat", "cats", "kitten", "kittens", "kitty", "tabby")),
    SceneObject("astronaut", "astronaut", ("astronaut", "astronauts", "spaceman", "cosmonaut", "woman", "person", "pilot")),
    SceneObject("cup", "coffee", ("cup", "cups", "mug", "mugs", "coffee", "saucer")),
    SceneObject("rocket", "rocket", ("rocket", "rockets", "spaceship", "shuttle", "missile")),
    SceneObject("motorcycle", "motorcycle", ("motorcycle", "motorcycles", "motorbike", "motorbikes", "bike", "bikes", "scooter")),
    SceneObject("horse", "horse", ("horse", "horses", "pony", "ponies", "stallion", "mare")),
    SceneObject("temple", "china", ("temple", "temples", "pagoda", "pagodas", "shrine", "palace", "building")),
    SceneObject("flower", "flower", ("flower", "flowers", "blossom", "blossoms", "bloom", "petals")),
)
OBJECT_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECTS)
BY_NAME: dict[str, SceneObject] = {o.name: o for o in OBJECTS}

# Training scenes add the partner of an object with high probability: the caption prior.
PARTNERS: dict[str, str] = {}
for _a, _b in (("astronaut", "rocket"), ("cat", "cup"), ("horse", "motorcycle"), ("temple", "flower")):
    PARTNERS[_a], PARTNERS[_b] = _b, _a

SYNONYMS: dict[str, str] = {s: o.name for o in OBJECTS for s in o.synonyms}
"""Every word that names an object -> the object's canonical name."""
