"""What a quality number means: the operating points of the installed models, and the
calibration table that maps a JPEG-style quality (1–100) to one of them.

An **operating point** is one rate of one shipped model: a fixed-rate model has one (``rate`` is
None); a variable-rate model may list several, addressed by a rate index.

The **calibration table** (``quality.json`` beside the weights) holds, for one validation set,
every operating point's bits per pixel, PSNR and MS-SSIM on each image, JPEG's at every quality
1–100, and what follows from them:

* ``--quality Q`` uses the operating point with the fewest bits per pixel that is at least as
  good as JPEG at quality Q on *both* PSNR and MS-SSIM, in fewer bytes, **on every image of the
  set** (not only on average: the promise then holds on slides outside the set too, where a
  tie on the average would not). JPEG's figures count as their running maximum over qualities
  up to Q, image by image, so a higher Q never maps to a cheaper point. Where no point does
  that in fewer bytes, Q maps to the cheapest point that is at least as good on every image
  (and no cheaper than the point of Q − 1), else to the top point (the one that matches JPEG up
  to the highest quality), and says so; the table's ``limit`` is the highest quality below which
  every quality is matched.
* the **default** is the operating point with the fewest bits per pixel whose mean MS-SSIM over
  the set is at least JPEG's at the reference quality (80): the archive's choice. It is a
  single-rate model's point where one qualifies: an archive's default codes every slide, and a
  variable-rate model (wider, for the high qualities) takes a multiple of the CPU time per pixel
  to encode and to decode (``docs/performance.md``), which a per cent or two of bytes does not repay.

Both choose among the models trained for pixel fidelity only (``distortion`` ``mse`` on their
card; ``fidelity`` in the table): a model trained for MS-SSIM reaches an MS-SSIM with fewer bits
by giving up PSNR, which neither a quality number nor an archive's default should do unasked.
Such models serve ``--target ms_ssim=…`` and ``--model``; ``matches_jpeg`` is given for every point.

Figures are compared as they are published, PSNR to 0.01 dB and MS-SSIM to 0.0001 (``DECIMALS``):
a point whose shown figure equals JPEG's counts as reaching it.

The table is built from ``wsicodec bench`` results (per-image rows of every operating point and
of JPEG at each quality) by :func:`build_calibration`; ``benchmarks/calibrate_quality.py`` is
the command.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsicodec.errors import QualityError
from wsicodec.models.registry import CALIBRATION_FILE

__all__ = [
    "CALIBRATION_FILE", "DECIMALS", "METRICS", "Calibration", "Choice", "Figures", "OperatingPoint",
    "QualityError", "build_calibration", "choose", "default_point", "load_calibration", "model_rows",
    "operating_points", "reaches",
]

#: the default's preference among the points that qualify, as the table and the store state it
_SINGLE_RATE_CLAUSE = "a single-rate model's where one qualifies"
#: the metrics a quality or a target speaks of (higher is better for both)
METRICS = ("psnr", "ms_ssim")
#: decimals a figure is published with
DECIMALS = {"psnr": 2, "ms_ssim": 4, "bpp": 3}
QUALITIES = range(1, 101)
#: the default's reference: MS-SSIM at least JPEG's at this quality
DEFAULT_REFERENCE = ("ms_ssim", 80)
TABLE_KIND = "wsicodec quality calibration"
TABLE_VERSION = 1


@dataclass(frozen=True)
class OperatingPoint:
    """One rate of one model: ``model`` (a shipped model's name) and, for a variable-rate model,
    ``rate`` (its rate index; None for a fixed-rate model)."""

    model: str
    rate: int | None = None

    @property
    def label(self) -> str:
        return self.model if self.rate is None else f"{self.model}@{self.rate}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rate": self.rate}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OperatingPoint:
        rate = d.get("rate")
        return cls(str(d["model"]), None if rate is None else int(rate))

    def __str__(self) -> str:
        return self.label


def operating_points(directory: Path | None = None) -> list[OperatingPoint]:
    """Every operating point of the installed (not retired) models: one per fixed-rate model,
    one per trained point of a model whose card has ``operating_points`` (``[{"index": i, ...}]``)."""
    from wsicodec.models import list_models

    points = []
    for card in list_models(directory):
        rates = getattr(card, "operating_points", None)
        if rates:
            points += [OperatingPoint(card.name, int(r["index"])) for r in rates]
        else:
            points.append(OperatingPoint(card.name))
    return points


@dataclass(frozen=True)
class Figures:
    """Mean bits per pixel, PSNR (dB) and MS-SSIM over a set of images, and (``per_image``) each
    image's, in the set's image order."""

    bpp: float
    psnr: float
    ms_ssim: float
    per_image: tuple[tuple[float, float, float], ...] = field(default=(), compare=False, repr=False)

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))

    def images(self) -> list[dict[str, float]]:
        """Each image's figures (the means as one image when there are none)."""
        rows = self.per_image or ((self.bpp, self.psnr, self.ms_ssim),)
        return [dict(zip(("bpp", "psnr", "ms_ssim"), r, strict=True)) for r in rows]

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(getattr(self, k)), 6) for k in ("bpp", "psnr", "ms_ssim")}

    def shown(self) -> str:
        return f"{self.bpp:.3f} bpp, PSNR {self.psnr:.2f} dB, MS-SSIM {self.ms_ssim:.4f}"

    @classmethod
    def of(cls, rows: list[tuple[float, float, float]]) -> Figures:
        n = len(rows)
        return cls(*(sum(r[i] for r in rows) / n for i in range(3)), per_image=tuple(tuple(r) for r in rows))


def reaches(value: float, reference: float, metric: str) -> bool:
    """``value`` is at least ``reference``, compared unrounded: a point that only ties JPEG once both
    are rounded for display is not "as good" (``metric`` names the figure; higher is better)."""
    return float(value) >= float(reference)


@dataclass
class Calibration:
    """A calibration table (see the module docstring)."""

    points: dict[OperatingPoint, Figures]
    jpeg: dict[int, Figures]
    mapping: dict[int, tuple[OperatingPoint, bool]]      # quality -> (point, matched)
    default: OperatingPoint
    top: OperatingPoint
    limit: int | None                                     # highest quality matched (all below it are)
    matches: dict[OperatingPoint, int | None] = field(default_factory=dict)  # point -> highest JPEG quality it matches
    meta: dict[str, Any] = field(default_factory=dict)    # set, images, sources, sha256 of each model
    path: Path | None = None

    def point_for(self, quality: int) -> tuple[OperatingPoint, bool]:
        if quality not in self.mapping:
            raise QualityError(f"quality {quality} is outside 1-100")
        return self.mapping[quality]

    @property
    def fidelity(self) -> list[OperatingPoint] | None:
        """The points ``--quality`` and the default choose among (None: every point; tables
        written before the rule named them)."""
        return self._points_named("fidelity")

    @property
    def single_rate(self) -> list[OperatingPoint] | None:
        """The points the default prefers (None: every point; tables written before the rule
        named them)."""
        return self._points_named("single_rate")

    def _points_named(self, key: str) -> list[OperatingPoint] | None:
        labels = self.meta.get(key)
        if labels is None:
            return None
        by_label = {p.label: p for p in self.points}
        return [by_label[x] for x in labels if x in by_label]

    def runs_of(self, point: OperatingPoint) -> list[tuple[str, bool]]:
        """The qualities that map to ``point`` as runs ``("a–b", matched)``, in order."""
        return _runs(self.qualities_of(point), lambda q: self.mapping[q][1])

    def matched_qualities(self) -> list[int]:
        """The qualities some point matches in fewer bytes."""
        return [q for q, (_, matched) in sorted(self.mapping.items()) if matched]

    def qualities_of(self, point: OperatingPoint) -> list[int]:
        """The qualities that map to ``point``."""
        return [q for q, (p, _) in sorted(self.mapping.items()) if p == point]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": TABLE_KIND, "version": TABLE_VERSION, **self.meta,
            "decimals": {k: DECIMALS[k] for k in METRICS},
            "rule": "quality Q: the fewest bits per pixel with PSNR and MS-SSIM at least JPEG's at Q (their running "
                    "maximum up to Q) and fewer bits per pixel than JPEG at Q, on every image; beyond the limit, the "
                    f"top point. default: the fewest bits per pixel with mean {DEFAULT_REFERENCE[0]} at least "
                    f"JPEG's at quality {DEFAULT_REFERENCE[1]}, {_SINGLE_RATE_CLAUSE}. "
                    "Both among the points of models trained for pixel fidelity (fidelity). "
                    "Figures compared unrounded.",
            "limit": self.limit, "top": self.top.to_dict(),
            "default": {**self.default.to_dict(), "metric": DEFAULT_REFERENCE[0],
                        "reference_quality": DEFAULT_REFERENCE[1]},
            "points": [{**p.to_dict(), **f.to_dict(), "matches_jpeg": self.matches.get(p),
                        "sha256": self.meta.get("sha256", {}).get(p.model), "per_image": _rounded(f.per_image)}
                       for p, f in sorted(self.points.items(), key=lambda kv: kv[1].bpp)],
            "jpeg": [{"quality": q, **f.to_dict(), "per_image": _rounded(f.per_image)}
                     for q, f in sorted(self.jpeg.items())],
            "qualities": [{"quality": q, **p.to_dict(), "matched": m} for q, (p, m) in sorted(self.mapping.items())],
        }


def dumps(cal: Calibration) -> str:
    """The table as JSON text, one point / quality per line (diffs stay readable)."""
    doc = cal.to_json()
    lines = ["{"]
    for i, (k, v) in enumerate(doc.items()):
        end = "," if i < len(doc) - 1 else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f" {json.dumps(k)}: [")
            lines += [f"  {json.dumps(e, separators=(',', ':'))}" + ("," if j < len(v) - 1 else "")
                      for j, e in enumerate(v)]
            lines.append(f" ]{end}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{end}")
    return "\n".join(lines + ["}"]) + "\n"


def _required(jpeg: Mapping[int, Figures]) -> dict[int, list[dict[str, float]]]:
    """JPEG's PSNR and MS-SSIM on each image at each quality, as their running maximum over
    lower qualities, and its bits per pixel there."""
    need: dict[int, list[dict[str, float]]] = {}
    best: list[dict[str, float]] | None = None
    for q in sorted(jpeg):
        now = jpeg[q].images()
        best = now if best is None else [{m: max(b[m], r[m]) for m in METRICS} for b, r in zip(best, now, strict=True)]
        need[q] = [{**b, "bpp": r["bpp"]} for b, r in zip(best, now, strict=True)]
    return need


def derive(points: Mapping[OperatingPoint, Figures], jpeg: Mapping[int, Figures],
           fidelity: Iterable[OperatingPoint] | None = None, single_rate: Iterable[OperatingPoint] | None = None
           ) -> tuple[dict[int, tuple[OperatingPoint, bool]], OperatingPoint, OperatingPoint, int | None,
                      dict[OperatingPoint, int | None]]:
    """The rule of the module docstring: ``(mapping, default, top, limit, matches)``;
    ``matches``: each point's highest JPEG quality it is at least as good as on every image;
    ``fidelity``: the points of models trained for pixel fidelity, the only ones ``--quality``
    and the default choose among (None: all); ``single_rate``: the points the default prefers
    (None: all); ``matches`` covers every point."""
    if not points:
        raise QualityError("no operating points to calibrate")
    missing = [q for q in QUALITIES if q not in jpeg]
    if missing:
        raise QualityError(f"JPEG figures missing for qualities {missing[:5]}{'…' if len(missing) > 5 else ''} "
                           "(measure every quality 1-100)")
    need = _required(jpeg)
    sizes = {len(f.images()) for f in [*points.values(), *jpeg.values()]}
    if len(sizes) != 1:
        raise QualityError("the operating points and JPEG were measured on different numbers of images")
    by_rate = sorted(points, key=lambda p: (points[p].bpp, p.label))
    mine = {p: points[p].images() for p in by_rate}

    def as_good(p: OperatingPoint, q: int) -> bool:
        return all(reaches(a[m], b[m], m) for a, b in zip(mine[p], need[q], strict=True) for m in METRICS)

    def cheaper(p: OperatingPoint, q: int) -> bool:
        return all(a["bpp"] < b["bpp"] for a, b in zip(mine[p], need[q], strict=True))

    matches = {p: max((q for q in QUALITIES if as_good(p, q)), default=None) for p in by_rate}
    allowed = set(by_rate if fidelity is None else fidelity)
    chosen = [p for p in by_rate if p in allowed]  # what --quality and the default choose among
    if not chosen:
        raise QualityError("no operating point to map qualities to (none trained for pixel fidelity)")
    top = max(chosen, key=lambda p: (matches[p] or 0, points[p].psnr, points[p].ms_ssim, -points[p].bpp))
    mapping: dict[int, tuple[OperatingPoint, bool]] = {}
    floor = 0.0  # the bits of the previous quality's point: a higher quality never costs less
    for q in QUALITIES:
        good = [p for p in chosen if as_good(p, q)]
        fit = [p for p in good if cheaper(p, q)]
        if fit:
            mapping[q] = (fit[0], True)
        else:  # none in fewer bytes: the cheapest at least as good, else the top point
            near = [p for p in good if points[p].bpp >= floor]
            mapping[q] = (near[0] if near else top, False)
        floor = points[mapping[q][0]].bpp
    limit = None
    for q in QUALITIES:
        if not mapping[q][1]:
            break
        limit = q
    metric, ref_q = DEFAULT_REFERENCE
    fit = [p for p in chosen if reaches(points[p].get(metric), jpeg[ref_q].get(metric), metric)
           and points[p].bpp < jpeg[ref_q].bpp]
    single = set(fit if single_rate is None else single_rate)
    preferred = [p for p in fit if p in single]
    default = (preferred or fit or [top])[0]
    return mapping, default, top, limit, matches


def build_calibration(results: Iterable[str | Path], directory: Path | None = None, set_name: str | None = None
                      ) -> Calibration:
    """A calibration table from ``wsicodec bench`` ``results.csv`` files (later files win for the
    same image, codec and setting): every installed operating point and JPEG at every quality
    1–100 must have been measured on the same images. Rows of a higher encoder effort (curves
    ``...-high``, ``...-max``) are left out: a quality maps to the standard encoder, which any
    effort matches."""
    import csv

    from wsicodec.effort import effort_suffix
    from wsicodec.models import list_models

    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    sources = []
    for path in results:
        path = Path(path)
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                rows[(r["image"], r["codec"], r["setting"])] = r
        sources.append(path.as_posix())
    cards = {c.name: c for c in list_models(directory)}
    points = operating_points(directory)
    if not points:
        raise QualityError("no installed models to calibrate")
    jpeg_rows: dict[int, list] = {}
    point_rows: dict[OperatingPoint, list] = {p: [] for p in points}
    labels = {p.label: p for p in points}
    for (_, codec, setting), r in rows.items():
        if codec == "jpeg":
            jpeg_rows.setdefault(int(float(setting)), []).append(r)
        elif codec.startswith("wsicodec") and not effort_suffix(codec) and setting in labels:
            point_rows[labels[setting]].append(r)
    images = {r["image"] for r in jpeg_rows.get(80, [])}
    if not images:
        raise QualityError(f"{', '.join(sources)}: no JPEG measurements at quality 80")
    unmeasured = [p for p in points if not point_rows[p]]  # installed but not benchmarked: left out
    points = [p for p in points if point_rows[p]]
    if not points:
        raise QualityError(f"{', '.join(sources)}: no installed operating point was measured")
    for what, got in [*((f"JPEG quality {q}", jpeg_rows.get(q, [])) for q in QUALITIES),
                      *((p.label, point_rows[p]) for p in points)]:
        have = {r["image"] for r in got}
        if have != images:
            raise QualityError(f"{', '.join(sources)}: {what} was measured on {len(have)} of the {len(images)} "
                               f"images (missing e.g. {sorted(images - have)[:1] or sorted(have - images)[:1]})")
    order = sorted(images)

    def figures_of(got: list[dict[str, Any]]) -> Figures:
        by_image = {r["image"]: r for r in got}
        return Figures.of([tuple(float(by_image[i][k]) for k in ("bpp", "psnr", "ms_ssim")) for i in order])

    figures = {p: figures_of(point_rows[p]) for p in points}
    jpeg = {q: figures_of(jpeg_rows[q]) for q in QUALITIES}
    fidelity = [p for p in points if cards[p.model].distortion == "mse"]
    single_rate = [p for p in points if not cards[p.model].operating_points]
    mapping, default, top, limit, matches = derive(figures, jpeg, fidelity, single_rate)
    meta = {"set": {"name": set_name or _set_name(images), "images": len(images), "image_names": order,
                    "pixels": int(sum(float(r["pixels"]) for r in jpeg_rows[80]))},
            "sources": sources,
            "reference_codec": "jpeg (libjpeg through imagecodecs, 4:2:0; whole encoded file)",
            "sha256": {p.model: cards[p.model].sha256 for p in points},
            "uncalibrated": [p.label for p in unmeasured],
            "fidelity": [p.label for p in fidelity], "single_rate": [p.label for p in single_rate]}
    return Calibration(figures, jpeg, mapping, default, top, limit, matches, meta)


def _rounded(rows: tuple) -> list[list[float]]:
    return [[round(float(v), 6) for v in r] for r in rows]


def _figures(d: Mapping[str, Any]) -> Figures:
    per = tuple(tuple(float(v) for v in r) for r in d.get("per_image") or ())
    return Figures(float(d["bpp"]), float(d["psnr"]), float(d["ms_ssim"]), per_image=per)


def _set_name(images: set[str]) -> str:
    return f"{len(images)} images"


def calibration_path(directory: Path | None = None) -> Path:
    from wsicodec.models import model_dir

    return Path(directory or model_dir()) / CALIBRATION_FILE


def load_calibration(directory: Path | None = None, check: bool = True) -> Calibration | None:
    """The weights folder's calibration table (None if it has none). ``check``: refuse a table
    that names a model which is not installed or whose weights changed since (sha256 of its card)."""
    path = calibration_path(directory)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != TABLE_KIND or doc.get("version") != TABLE_VERSION:
            raise ValueError(f"not a version-{TABLE_VERSION} calibration table")
        points = {OperatingPoint.from_dict(d): _figures(d) for d in doc["points"]}
        matches = {OperatingPoint.from_dict(d): d.get("matches_jpeg") for d in doc["points"]}
        jpeg = {int(d["quality"]): _figures(d) for d in doc["jpeg"]}
        mapping = {int(d["quality"]): (OperatingPoint.from_dict(d), bool(d["matched"])) for d in doc["qualities"]}
        keys = ("set", "sources", "reference_codec", "sha256", "uncalibrated", "fidelity", "single_rate")
        meta = {k: doc[k] for k in keys if k in doc}
        cal = Calibration(points, jpeg, mapping, OperatingPoint.from_dict(doc["default"]),
                          OperatingPoint.from_dict(doc["top"]), doc.get("limit"), matches, meta, path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise QualityError(f"{path}: unreadable calibration table ({e})") from None
    if check:
        from wsicodec.models import list_models

        cards = {c.name: c.sha256 for c in list_models(directory)}
        for p in {*cal.points, cal.default, cal.top, *(op for op, _ in cal.mapping.values())}:
            if p.model not in cards:
                raise QualityError(f"{path}: the calibration names model {p.model!r}, which is not installed "
                                   "(rebuild the table: benchmarks/calibrate_quality.py)")
            if cal.meta.get("sha256", {}).get(p.model, cards[p.model]) != cards[p.model]:
                raise QualityError(f"{path}: model {p.model!r} changed since the calibration "
                                   "(rebuild the table: benchmarks/calibrate_quality.py)")
    return cal


def default_point(directory: Path | None = None) -> OperatingPoint:
    """The operating point used when none is asked for: the calibration's default; without a
    calibration table, the model named in the weights folder's ``DEFAULT`` file or the first one."""
    cal = load_calibration(directory)
    if cal is not None:
        return cal.default
    from wsicodec.models.registry import default_model_name

    return OperatingPoint(default_model_name(directory))


@dataclass
class Choice:
    """How a compression's operating point was chosen, and the record kept in the store
    (``attributes["wsicodec"]["quality"]``, docs/format.md)."""

    point: OperatingPoint
    record: dict[str, Any]
    note: str = ""         # one line for the user (e.g. a quality beyond the calibration's limit)


def choose(model: str | None = None, quality: int | None = None, directory: Path | None = None) -> Choice:
    """The operating point for ``model`` (an expert's choice), a ``quality`` (1–100), or neither
    (the default). A target is searched on the slide itself: :func:`wsicodec.target.choose_target`."""
    if model is not None and quality is not None:
        raise QualityError("give --model or --quality, not both")
    if model is not None:
        return Choice(OperatingPoint(model), {"chosen_by": "model", "operating_point": {"model": model, "rate": None}})
    if quality is None:
        point = default_point(directory)
        cal = load_calibration(directory)
        record = {"chosen_by": "default", "operating_point": point.to_dict()}
        if cal is not None and point in cal.points:
            metric, ref_q = DEFAULT_REFERENCE
            record["calibration"] = _calibration_record(cal, point, ref_q)
            record["rule"] = (f"fewest bits per pixel with {metric} at least JPEG's at quality {ref_q}, "
                              + _SINGLE_RATE_CLAUSE)
        return Choice(point, record)
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise QualityError(f"quality {quality!r} is outside 1-100")
    cal = load_calibration(directory)
    if cal is None:
        from wsicodec.models import model_dir

        raise QualityError(f"{Path(directory or model_dir())}: no calibration table ({CALIBRATION_FILE}) for "
                           "--quality; use --model")
    point, matched = cal.point_for(quality)
    record = {"chosen_by": "quality", "quality": quality, "operating_point": point.to_dict(), "matched": matched,
              "calibration": _calibration_record(cal, point, quality)}
    note = ""
    if not matched:
        f, j = cal.points[point], cal.jpeg[quality]
        set_name = cal.meta.get("set", {}).get("name", "the calibration set")
        which = (f"using the top operating point {point}" if point == cal.top
                 else f"using {point}, at least as good on every image, in more bytes on some")
        # The rule is per image, the figures shown are means: say so, or a top point whose means beat
        # JPEG's reads as a contradiction.
        note = (f"quality {quality}: no installed model matches JPEG q{quality} in fewer bytes on every image of "
                f"{set_name} (JPEG's means: {j.bpp:.3f} bpp, PSNR {j.psnr:.2f} dB, MS-SSIM {j.ms_ssim:.4f}; models "
                f"match qualities {_spans(cal.matched_qualities()) or 'none'}); {which} ({f.bpp:.3f} bpp, "
                f"PSNR {f.psnr:.2f} dB, MS-SSIM {f.ms_ssim:.4f})")
    return Choice(point, record, note)


def _calibration_record(cal: Calibration, point: OperatingPoint, quality: int) -> dict[str, Any]:
    """The validation figures behind a choice, as kept in the store."""
    return {"set": cal.meta.get("set", {}).get("name"), "point": cal.points[point].to_dict(),
            "jpeg": {"quality": quality, **cal.jpeg[quality].to_dict()}}


def _runs(qualities: list[int], key: Callable[[int], Any] = lambda q: None) -> list[tuple[str, Any]]:
    """Consecutive qualities of the same ``key`` as ``("a–b", key)`` (``"a"`` for one)."""
    runs: list[list] = []
    for q in qualities:
        if runs and runs[-1][1] == q - 1 and runs[-1][2] == key(q):
            runs[-1][1] = q
        else:
            runs.append([q, q, key(q)])
    return [(f"{a}–{b}" if b > a else str(a), k) for a, b, k in runs]


def _spans(qualities: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1–3, 7"``."""
    return ", ".join(text for text, _ in _runs(qualities))


def model_rows(directory: Path | None = None) -> tuple[list[dict[str, Any]], str]:
    """``wsicodec models``: one row per operating point (cheapest first; uncalibrated ones after,
    with their model card's validation figures), and a caption."""
    from wsicodec.models import list_models

    cards = {c.name: c for c in list_models(directory)}
    cal = load_calibration(directory, check=False)
    try:
        default = default_point(directory) if cards else None
    except QualityError:
        default = None
    rows = []
    for p in operating_points(directory):
        c = cards[p.model]
        f = cal.points.get(p) if cal else None
        v, lmbda = c.validation, c.lmbda
        if p.rate is not None:  # a variable-rate model's point: its own λ and figures on the card
            own = next((q for q in c.operating_points if q.get("index") == p.rate), {})
            v, lmbda = own.get("validation", {}), own.get("lambda")
        figures = f.to_dict() if f else {k: v.get(k) for k in ("bpp", "psnr", "ms_ssim")}
        runs = cal.runs_of(p) if cal and f else []
        unmatched = " (top)" if cal is not None and p == cal.top else " (not in fewer bytes)"
        rows.append({
            "name": p.model, "operating_point": p.label, "rate": p.rate, "default": p == default,
            "kind": c.kind,
            "N/M": f"{c.params.get('N')}/{c.params.get('M')}", "lambda": f"{lmbda:g}" if lmbda else "",
            **figures, "figures": f"calibration ({cal.meta.get('set', {}).get('name')})" if f else "model card",
            "matches_jpeg": cal.matches.get(p) if f else None,
            "qualities": ", ".join(text + ("" if m else unmatched) for text, m in runs),
            "sha256": c.sha256, "steps": c.steps,
        })
    rows.sort(key=lambda r: (r["figures"] == "model card", r["bpp"] if r["bpp"] is not None else 1e9,
                             r["operating_point"]))
    if cal is None:
        caption = "* default; bpp, PSNR, MS-SSIM: the model cards' validation figures (no calibration table)"
    else:
        s = cal.meta.get("set", {})
        caption = (f"* default: the fewest bits per pixel with MS-SSIM at least JPEG q{DEFAULT_REFERENCE[1]}'s, "
                   f"{_SINGLE_RATE_CLAUSE} (--quality and the default use models trained for "
                   "pixel fidelity; kind \"MS-SSIM\": trained for MS-SSIM, for --target ms_ssim). "
                   f"bpp, PSNR, MS-SSIM: mean over the {s.get('images')} images of {s.get('name')}; ≥ JPEG: the "
                   f"highest JPEG quality matched on both; --quality: the qualities that use it"
                   + (f"; qualities {_spans(missing)} match no model in fewer bytes: --quality uses the cheapest "
                      f"point at least as good, else the top point {cal.top}"
                      if (missing := [q for q in QUALITIES if not cal.mapping[q][1]]) else ""))
    return rows, caption
