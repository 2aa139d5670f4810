"""What kind of image an input holds, decided before any tile is coded.

The shipped models were trained on 8-bit RGB brightfield H&E. :func:`assess` sorts an input
into one of:

* ``high-bit-depth`` (more than 8 bits, or signed / float samples), ``multi-plane`` (focal
  planes, time points) and ``multichannel`` (2 or more than 3 channels): a store holds one 8-bit
  RGB image, so coding these would throw data away. Never coded; nor is ``unsupported`` (samples
  with no 8-bit RGB reading, e.g. CIELAB or a 1-bit TIFF).
* ``single-channel`` (greyscale, e.g. one fluorescence channel) and ``dark-background``
  (fluorescence or dark-field: light on black, the opposite of what the models learnt): coded as
  RGB only when asked (``compress --allow-non-he``), since the models code them far worse than H&E.
* ``brightfield``: coded. ``stain`` says whether it looks like H&E (``H&E-like``), like another
  stain (``other``: immunohistochemistry, special stains; coded, with a note in the store's
  metadata) or cannot be told (``unknown``: too little stained tissue in the overview).

Both image measurements are made on a thumbnail (an overview of the whole slide), because that
is what tells the background from the tissue, and are kept simple on purpose:

* **Dark background.** Brightfield light passes the glass, so empty areas are bright and even
  dense tissue leaves few pixels near black; fluorescence and dark-field images are mostly black.
  The background is taken as dark when at least ``DARK_SHARE`` of the overview has a luma below
  ``DARK_LUMA``.
* **Stain.** H&E colours every stained pixel between the blue-purple of haematoxylin and the pink
  of eosin: hues from ``HE_HUES[0]`` round through red to ``HE_HUES[1]`` degrees. DAB (the brown
  of immunohistochemistry) and the blues, greens and yellows of special stains lie outside that
  arc. The share of stained tissue (optical density above ``STAINED_OD``, chroma at least
  ``STAINED_CHROMA``; weighted by chroma, so that greyish pixels count little) whose hue lies
  outside the arc decides: ``OTHER_STAIN_SHARE`` or more is another stain. A hue test was chosen
  over Ruifrok–Johnston colour deconvolution because with the standard stain vectors H&E images
  themselves put a large part of their optical density into the DAB channel (dark nuclei), while
  their hues stay inside the arc; the measurements on real H&E images that set these thresholds
  are in ``docs/inputs.md`` (``benchmarks/content_calibration.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Content", "assess", "measure"]

#: a pixel with luma (ITU-R BT.601, 0-255) below this counts as near black
DARK_LUMA = 40
#: the background is dark when at least this share of the overview is near black
DARK_SHARE = 0.5
#: stained tissue: optical density (summed over R, G, B) above this ...
STAINED_OD = 0.3
#: ... and chroma (max - min of R, G, B) at least this
STAINED_CHROMA = 20
#: hues (degrees) of H&E: from blue-purple round through red to orange-red
HE_HUES = (235.0, 20.0)
#: another stain when at least this share of the stained tissue lies outside HE_HUES
OTHER_STAIN_SHARE = 0.25
#: below this share of stained pixels in the overview the stain is not judged
MIN_STAINED_SHARE = 0.005

#: the hue families outside HE_HUES, for the note: (start, end, description)
_OTHER_HUES = (("brown", 20.0, 75.0, "brown or yellow (e.g. DAB immunohistochemistry)"),
               ("green", 75.0, 170.0, "green (e.g. a trichrome or light-green counterstain)"),
               ("blue", 170.0, 235.0, "blue or cyan (e.g. alcian blue or aniline blue)"))

#: kinds coded only with ``allow_non_he``; kinds never coded
_NEEDS_ALLOW = ("single-channel", "dark-background")
_NEVER = ("high-bit-depth", "multi-plane", "multichannel")
#: kind of an input whose samples have no 8-bit RGB reading (e.g. CIELAB, 1-bit TIFF)
_UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Content:
    """What an input holds. ``found`` says it in words; ``note`` is kept in the store's metadata
    when the input is coded although it is not H&E-like brightfield."""

    kind: str                               # brightfield | dark-background | single-channel | multichannel | ...
    found: str
    stain: str | None = None                # brightfield only: H&E-like | other | unknown
    note: str | None = None
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def dark_background(self) -> bool:
        return self.kind == "dark-background"

    def refusal(self, allow_non_he: bool = False) -> str | None:
        """Why ``compress`` does not code this input (``None``: it does)."""
        if self.kind == _UNSUPPORTED:
            return f"{self.found}; not coded"
        if self.kind in _NEVER:
            return (f"{self.found}; a store holds one 8-bit RGB image, so coding it would lose data "
                    f"(not coded, --allow-non-he does not change that; export an 8-bit RGB rendering "
                    f"to compress that instead)")
        if self.kind in _NEEDS_ALLOW and not allow_non_he:
            return (f"{self.found}; the models were trained on H&E brightfield and code this much worse "
                    f"(use --allow-non-he to code it anyway)")
        return None

    def to_meta(self, allowed: bool = False) -> dict[str, Any]:
        """The store's ``content`` metadata object (docs/format.md)."""
        note = self.note
        if allowed and self.kind in _NEEDS_ALLOW:
            note = f"{self.found}; coded with --allow-non-he by models trained on H&E brightfield"
        meta: dict[str, Any] = {"kind": self.kind, "found": self.found}
        if self.stain is not None:
            meta["stain"] = self.stain
        if note:
            meta["note"] = note
        meta["measured"] = dict(self.measured)
        return meta


def measure(thumbnail: np.ndarray) -> dict[str, float]:
    """The overview measurements the decision rests on: ``dark_share`` (share of pixels with luma
    below DARK_LUMA), ``stained_share`` (share of stained pixels) and ``other_stain_share``
    (chroma-weighted share of stained pixels with hues outside HE_HUES), plus the share of each
    hue family outside the arc (``brown``, ``green``, ``blue``)."""
    from PIL import Image

    rgb = np.ascontiguousarray(thumbnail[:, :, :3], np.uint8)
    px = rgb.reshape(-1, 3)
    n = max(len(px), 1)
    luma = np.asarray(Image.fromarray(rgb).convert("L")).reshape(-1)
    out = {"dark_share": float(np.count_nonzero(luma < DARK_LUMA) / n)}
    od = -np.log10(np.maximum(px, 1) / 255.0).sum(axis=1)
    chroma = px.max(axis=1).astype(np.int16) - px.min(axis=1)
    stained = (od > STAINED_OD) & (chroma >= STAINED_CHROMA)
    out["stained_share"] = float(np.count_nonzero(stained) / n)
    hue = np.asarray(Image.fromarray(rgb).convert("HSV"))[:, :, 0].reshape(-1)[stained] * (360.0 / 256.0)
    weight = chroma[stained].astype(np.float64)
    total = weight.sum()
    in_arc = (hue >= HE_HUES[0]) | (hue < HE_HUES[1])
    out["other_stain_share"] = float(weight[~in_arc].sum() / total) if total else 0.0
    for name, lo, hi, _ in _OTHER_HUES:
        out[name] = float(weight[(hue >= lo) & (hue < hi)].sum() / total) if total else 0.0
    return {k: round(v, 4) for k, v in out.items()}


def assess(src: Any, thumbnail: np.ndarray | None = None) -> Content:
    """Sort a :class:`~wsicodec.source.SlideSource` (see the module docstring). The sample layout
    is judged from the file's description alone; the rest from ``thumbnail`` (read from ``src``
    when not given)."""
    bits, kind, channels, planes = int(src.bits), str(src.sample_kind), int(src.channels), str(src.planes)
    if bits > 8 or kind in ("signed", "float"):
        also = f", {channels} channel{'s' if channels > 1 else ''}" if channels != 3 else ""
        return Content("high-bit-depth", f"{bits}-bit {kind} samples{also}")
    if planes:
        return Content("multi-plane", f"more than one image plane ({planes})")
    if channels not in (1, 3):
        return Content("multichannel", f"{channels} channels (not RGB)")
    if getattr(src, "unreadable", None):
        return Content(_UNSUPPORTED, str(src.unreadable))
    if channels == 1:
        return Content("single-channel", "a single-channel (greyscale) image, e.g. one fluorescence channel")
    if thumbnail is None:
        thumbnail = src.thumbnail(1024)
    m = measure(thumbnail)
    if m["dark_share"] >= DARK_SHARE:
        return Content("dark-background", f"a dark background ({m['dark_share']:.0%} of the overview is near "
                                          f"black): fluorescence or dark-field", measured=m)
    if m["stained_share"] < MIN_STAINED_SHARE:
        return Content("brightfield", "brightfield, too little stained tissue in the overview to judge the stain",
                       stain="unknown", measured=m)
    if m["other_stain_share"] < OTHER_STAIN_SHARE:
        return Content("brightfield", "brightfield, H&E-like colours", stain="H&E-like", measured=m)
    family = max(_OTHER_HUES, key=lambda f: m[f[0]])[3]
    found = (f"brightfield, not H&E-like: {m['other_stain_share']:.0%} of the stained tissue is outside H&E's "
             f"pink-purple hues, mostly {family}")
    return Content("brightfield", found, stain="other", measured=m,
                   note=f"{found}; coded by models trained on H&E, expect lower fidelity than on H&E")
