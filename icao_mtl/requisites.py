"""The 23 ICAO / ISO/IEC 19794-5 photographic requisites and their label codes.

Ids are those of the paper's reference code (Gadelha et al., VISAPP 2023); the order is the order of
its ``ICAO_REQ`` enum, which is also the row order of the paper's Table 1. Display names follow
Table 1 ("Ink Mark" is not in Table 1: the paper could not evaluate it). ``ficv_test`` is the number
of the test in the BioLab-ICAO / FVC-onGoing "Face Image ISO Compliance Verification" benchmark, where
test 1 is eye localisation and tests 2-24 are these requisites.

Label codes (the same in every dataset this package reads):

====  ==================  ===============================================================
code  name                meaning
====  ==================  ===============================================================
 1    ``COMPLIANT``       the image satisfies the requisite (the positive class of metrics)
 0    ``NON_COMPLIANT``   the image violates it
-1    ``NOT_APPLICABLE``  the requisite cannot be assessed on this image (e.g. a glasses
                          requisite on a face without glasses); masked out of every loss
                          and metric
====  ==================  ===============================================================

The four task groups are those of Handcrafted 3 and of the NAS model, as written in the reference
code (``__get_tasks_groups``). The reference paired them with labels by position and so trained other
groupings than these (spec section 5.8); this package always pairs labels with outputs by name.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPLIANT = 1
NON_COMPLIANT = 0
NOT_APPLICABLE = -1
LABEL_CODES = (COMPLIANT, NON_COMPLIANT, NOT_APPLICABLE)
LABEL_NAMES = {COMPLIANT: "compliant", NON_COMPLIANT: "non-compliant", NOT_APPLICABLE: "not applicable"}


@dataclass(frozen=True)
class Requisite:
    """One photographic requisite.

    Attributes:
        id: identifier used for columns, model outputs and metrics (e.g. ``"eyes_closed"``).
        name: display name as in the paper's Table 1.
        position: index in the reference code's enum (0-22).
        ficv_test: FVC-onGoing FICV test number (2-24).
        meaning: one line: when an image is non-compliant.
        group: task group of Handcrafted 3 / NAS (``"g0"`` .. ``"g3"``).
        needs_glasses: True if the requisite only applies to faces wearing glasses.
    """

    id: str
    name: str
    position: int
    ficv_test: int
    meaning: str
    group: str
    needs_glasses: bool = False


# (id, Table 1 name, FICV test, non-compliant when ..., group, glasses only)
_TABLE = (
    ("mouth", "Mouth", 23, "the mouth is open", "g1", False),
    ("rotation", "Rotation", 12, "roll, pitch or yaw of the head exceeds the tolerance", "g3", False),
    ("l_away", "L. Away", 3, "the gaze is not directed at the camera", "g2", False),
    ("eyes_closed", "Eyes Closed", 10, "one or both eyes are closed", "g2", False),
    ("close", "Close", 24, "another face, a toy or an object is too close to the face", "g0", False),
    ("hat", "Hat", 21, "a hat or cap is worn", "g3", False),
    ("dark_glasses", "Dark Glasses", 17, "lenses are tinted so the eyes are not clearly visible", "g2", False),
    ("frames_heavy", "Fr. Heavy", 19, "the spectacle frames are too thick", "g2", True),
    ("frame_eyes", "Fr. Eyes", 20, "the spectacle frame crosses or covers the eyes", "g2", True),
    ("flash_lenses", "Flash Lenses", 18, "flash reflections on the spectacle lenses", "g2", True),
    ("veil", "Veil", 22, "a veil, scarf or mask covers the face", "g1", False),
    ("reflection", "Reflection", 13, "specular flash hot-spots on the skin", "g3", False),
    ("light", "Light", 6, "the face is under- or over-exposed", "g3", False),
    ("sh_face", "Sh. Face", 16, "shadows or uneven lighting across the face", "g3", False),
    ("sh_head", "Sh. Head", 15, "the head casts a shadow on the background", "g0", False),
    ("blurred", "Blurred", 2, "the image is out of focus or motion-blurred", "g0", False),
    ("ink_mark", "Ink Mark", 4, "the photo shows ink marks or creases", "g0", False),
    ("skin_tone", "Skin Tone", 5, "the skin colour is unnatural", "g3", False),
    ("washed_out", "Washed Out", 7, "contrast and colours are washed out", "g0", False),
    ("pixelation", "Pixel.", 8, "pixel blocks are visible", "g0", False),
    ("hair_eyes", "Hair Eyes", 9, "hair falls across the eyes", "g2", False),
    ("background", "Background", 11, "the background is not plain and uniform", "g0", False),
    ("red_eyes", "Red Eyes", 14, "red-eye effect from the flash", "g2", False),
)

REQUISITES: tuple[Requisite, ...] = tuple(
    Requisite(id=r[0], name=r[1], position=i, ficv_test=r[2], meaning=r[3], group=r[4], needs_glasses=r[5])
    for i, r in enumerate(_TABLE)
)
#: The 23 ids in the reference enum order.
IDS: tuple[str, ...] = tuple(r.id for r in REQUISITES)
BY_ID: dict[str, Requisite] = {r.id: r for r in REQUISITES}

#: Task groups of Handcrafted 3 and NAS, members in the reference code's output order.
GROUPS: dict[str, tuple[str, ...]] = {
    "g0": ("background", "close", "ink_mark", "pixelation", "washed_out", "blurred", "sh_head"),
    "g1": ("mouth", "veil"),
    "g2": ("red_eyes", "flash_lenses", "dark_glasses", "l_away", "frame_eyes", "hair_eyes", "eyes_closed",
           "frames_heavy"),
    "g3": ("sh_face", "skin_tone", "light", "hat", "rotation", "reflection"),
}

#: Requisites that only apply to faces with glasses (-1 without glasses).
GLASSES_ONLY: tuple[str, ...] = tuple(r.id for r in REQUISITES if r.needs_glasses)

#: Requisites that are properties of the whole image, not of the face: the defects the renderer can
#: also apply to real faces (the LFW task set).
IMAGE_LEVEL: tuple[str, ...] = ("blurred", "pixelation", "washed_out", "light", "ink_mark")


def check_ids(ids, *, what="requisite"):
    """Return ``ids`` as a tuple after checking each is a known requisite id.

    Raises:
        ValueError: naming the unknown ids and listing the valid ones.
    """
    ids = tuple(ids)
    unknown = [i for i in ids if i not in BY_ID]
    if unknown:
        raise ValueError(
            f"Unknown {what} id(s) {unknown}. Valid ids are: {', '.join(IDS)}."
        )
    return ids


def group_of(task_id: str, groups: dict[str, tuple[str, ...]] | None = None) -> str:
    """Return the name of the group holding ``task_id`` (default: :data:`GROUPS`)."""
    for name, members in (groups or GROUPS).items():
        if task_id in members:
            return name
    raise KeyError(f"{task_id!r} is in no group; groups are {list((groups or GROUPS))}")


assert sorted(sum(GROUPS.values(), ())) == sorted(IDS), "every requisite is in exactly one group"
for _r in REQUISITES:
    assert _r.group == group_of(_r.id), _r.id
