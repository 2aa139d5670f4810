"""Rate–distortion helpers: monotonicity of a sweep, averaged curves, Bjøntegaard delta rate and
the rate needed to reach a quality target. numpy only."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _clean(rates: Sequence[float], quals: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, np.float64)
    q = np.asarray(quals, np.float64)
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    return r[ok], q[ok]


def is_monotone(rates: Sequence[float], quals: Sequence[float], higher_is_better: bool = True,
                tol: float = 0.0) -> bool:
    """True when, along the sweep order, the rate never decreases and the quality never gets
    worse (by more than ``tol`` in the metric's units)."""
    r = np.asarray(rates, np.float64)
    q = np.asarray(quals, np.float64)
    if len(r) < 2:
        return True
    if not higher_is_better:
        q = -q
    return bool(np.all(np.diff(r) >= 0) and np.all(np.diff(q) >= -tol))


def bd_rate(rates_a: Sequence[float], quals_a: Sequence[float], rates_b: Sequence[float],
            quals_b: Sequence[float], within: tuple[float, float] | None = None) -> float:
    """Bjøntegaard delta rate of curve B against anchor A, in percent: the average difference of
    log-rate at equal quality over the quality range both curves cover (negative: B needs fewer
    bits). log-rate is fitted as a polynomial in quality (cubic for >= 4 points, as in VCEG-M33;
    lower degree for fewer) and integrated exactly. Works for any quality metric, whichever
    direction is better. ``within`` (lo, hi) narrows the quality range further (the fits still
    use every point): BD-rate over part of the anchor's sweep. NaN when a curve has < 2 points or
    the ranges do not overlap."""
    ra, qa = _clean(rates_a, quals_a)
    rb, qb = _clean(rates_b, quals_b)
    if len(ra) < 2 or len(rb) < 2 or np.ptp(qa) == 0 or np.ptp(qb) == 0:
        return float("nan")
    lo = max(qa.min(), qb.min())
    hi = min(qa.max(), qb.max())
    if within is not None:
        lo, hi = max(lo, min(within)), min(hi, max(within))
    if not hi > lo:
        return float("nan")
    pa = np.polyfit(qa, np.log(ra), min(3, len(ra) - 1))
    pb = np.polyfit(qb, np.log(rb), min(3, len(rb) - 1))
    ia, ib = np.polyint(pa), np.polyint(pb)
    avg_a = (np.polyval(ia, hi) - np.polyval(ia, lo)) / (hi - lo)
    avg_b = (np.polyval(ib, hi) - np.polyval(ib, lo)) / (hi - lo)
    return float((math.exp(avg_b - avg_a) - 1) * 100)


def rate_at_quality(rates: Sequence[float], quals: Sequence[float], target: float,
                    higher_is_better: bool = True) -> float:
    """Rate needed to reach ``target`` quality, interpolated linearly in log-rate between the two
    sweep points around it; NaN when the sweep never reaches it. A point already at the target
    (or the lowest-rate point beating it) gives that point's rate exactly."""
    r, q = _clean(rates, quals)
    if len(r) == 0:
        return float("nan")
    order = np.argsort(r)
    r, q = r[order], q[order]
    if not higher_is_better:
        q, target = -q, -target
    good = np.nonzero(q >= target)[0]
    if len(good) == 0:
        return float("nan")
    i = int(good[0])
    if i == 0 or q[i] == target:
        return float(r[i])
    q0, q1 = q[i - 1], q[i]
    t = (target - q0) / (q1 - q0)
    return float(math.exp(math.log(r[i - 1]) + t * (math.log(r[i]) - math.log(r[i - 1]))))


def average_curves(rows: list[dict], metrics: Sequence[str]) -> dict[str, dict]:
    """Per codec, the sweep averaged over images at each setting: mean bpp and mean of each
    metric (PSNR averaged in dB), plus encode/decode speed (total pixels / total seconds).

    Only images measured at every setting of a codec are averaged, so points stay comparable."""
    out: dict[str, dict] = {}
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    for codec in codecs:
        crow = [r for r in rows if r["codec"] == codec]
        settings = list(dict.fromkeys(r["setting"] for r in crow))
        images = list(dict.fromkeys(r["image"] for r in crow))
        complete = [im for im in images if {r["setting"] for r in crow if r["image"] == im} >= set(settings)]
        points = []
        for s in settings:
            sel = [r for r in crow if r["setting"] == s and r["image"] in complete]
            if not sel:
                continue
            p: dict = {"setting": s, "images": len(sel), "bpp": float(np.mean([r["bpp"] for r in sel]))}
            for m in metrics:
                vals = [r.get(m) for r in sel]
                vals = [v for v in vals if v is not None and np.isfinite(v)]
                p[m] = float(np.mean(vals)) if len(vals) == len(sel) else None
            pix = sum(r["pixels"] for r in sel)
            enc = sum(r["pixels"] / r["encode_mpix_s"] / 1e6 for r in sel if r.get("encode_mpix_s"))
            dec = sum(r["pixels"] / r["decode_mpix_s"] / 1e6 for r in sel if r.get("decode_mpix_s"))
            p["encode_mpix_s"] = pix / 1e6 / enc if enc > 0 else None
            p["decode_mpix_s"] = pix / 1e6 / dec if dec > 0 else None
            points.append(p)
        out[codec] = {"images": len(complete), "points": points}
    return out


def curve(summary: dict, codec: str, metric: str) -> tuple[list[float], list[float]]:
    pts = [p for p in summary[codec]["points"] if p.get(metric) is not None]
    return [p["bpp"] for p in pts], [p[metric] for p in pts]
