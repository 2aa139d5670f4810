"""De-identification of what a store keeps besides pixels: ``compress --deidentify``.

Removed: the ``label`` and ``macro`` associated images (they show the slide label: barcode,
patient / case numbers, handwriting), every property whose name says it identifies the slide, the
patient, the operator, the scanner or the time of scanning, the free-text fields that embed them
(``tiff.ImageDescription``, ``openslide.comment``, ...), the content hash OpenSlide computes
(``openslide.quickhash-1``, it links the store back to the original file), the
``openslide.associated.<name>.*`` properties of removed images, and the source file name. Kept:
scan parameters (MPP, objective power / AppMag, geometry, stripe width, focus offsets, ...).

This removes the identifying fields we know of in slide metadata; it cannot see identifying text
in the tissue image itself (level 0) or in the thumbnail.
"""
from __future__ import annotations

import re
from typing import Any

#: associated images that show the slide label
DROPPED_ASSOCIATED = ("label", "macro")

#: property names (the part after the vendor prefix, case-insensitive) that identify
_IDENTIFYING = re.compile(
    r"""(^|[ ._-])(
        barcode | label | file\s*_?name | filename | path | folder | directory |
        date | datetime | ^time$ | time\s*_?zone | timestamp | created | modified | acquired | scan\s*_?time |
        user | operator | technician | author | artist | owner | copyright |
        patient | accession | case | specimen | study | subject | person | physician | doctor |
        slide\s*_?id | slide\s*_?name | image\s*_?id | imageid | uuid | guid | serial | id$ |
        scanscope\s*_?id | dsr\s*_?id | device\s*_?id | host | computer | institution | hospital | site |
        title | comment | description | note | reference | name$ | quickhash
    )""",
    re.IGNORECASE | re.VERBOSE,
)

#: free-text TIFF fields that embed names, dates and IDs
_FREE_TEXT = {"tiff.ImageDescription", "tiff.DateTime", "tiff.Artist", "tiff.HostComputer", "tiff.DocumentName",
              "tiff.Copyright", "tiff.PageName", "openslide.comment", "openslide.quickhash-1"}

#: always kept: the geometry and scan parameters OpenSlide reports
_KEEP = re.compile(r"^openslide\.(mpp-[xy]|objective-power|vendor|level-count|level\[\d+\]\..*|bounds-.*|"
                   r"background-color|icc-size|region\[\d+\]\..*)$")


def is_identifying(key: str) -> bool:
    """Whether a property (OpenSlide name, e.g. ``aperio.Filename``) is removed by --deidentify."""
    if _KEEP.match(key):
        return False
    if key in _FREE_TEXT:
        return True
    name = key.split(".", 1)[1] if "." in key else key
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)  # ScanDate -> Scan Date
    return bool(_IDENTIFYING.search(name))


def deidentify(properties: dict[str, str], associated: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any],
                                                                                   list[str], list[str]]:
    """Return ``(properties, associated, removed_property_names, removed_associated_names)``."""
    dropped_images = sorted(n for n in associated if n.lower() in DROPPED_ASSOCIATED)
    keep_images = {n: im for n, im in associated.items() if n not in dropped_images}
    removed, kept = [], {}
    for k, v in properties.items():
        m = re.match(r"^openslide\.associated\.([^.]+)\.", k)
        if (m and m.group(1).lower() in DROPPED_ASSOCIATED) or is_identifying(k):
            removed.append(k)
        else:
            kept[k] = v
    return kept, keep_images, sorted(removed), dropped_images
