"""``wsicodec info``: what a store or a slide holds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wsicodec.errors import StoreError, first_line
from wsicodec.store import ENCODED_ASSOCIATED, WsiStore, store_size

_MEDIA_WORDS = {"image/tiff": "the source's own JPEG", "image/webp": "lossless WebP", "image/png": "lossless PNG"}


def _describe_store(s: WsiStore, path: Any) -> dict[str, Any]:
    m = s.meta
    W, H = s.dimensions
    size = store_size(path)
    image = store_size(path / "latents")  # the coded image: latent chunks + their array metadata
    associated = {}
    for name in m.get("associated", []):
        kind = "raw pixels"
        if m["format_version"] >= ENCODED_ASSOCIATED:
            try:
                kind = _MEDIA_WORDS[s.group[f"associated/{name}"].attrs["media_type"]]
            except Exception as e:
                raise StoreError(f"{path}: damaged associated image {name!r} ({first_line(e)})") from None
        associated[name] = {"bytes": store_size(path / "associated" / name), "kept_as": kind}
    associated_bytes = sum(a["bytes"] for a in associated.values())
    source = m.get("source") or {}
    source_bytes = source.get("file_size")
    d: dict[str, Any] = {
        "kind": "wsicodec store", "format_version": m["format_version"],
        "dimensions": [W, H], "mpp": m.get("mpp"), "objective_power": m.get("objective_power"),
        "vendor": m.get("vendor"), "model": m["model"]["name"], "model_sha256": m["model"]["sha256"],
        "tile_size": m["tile_size"], "tiles": m.get("tiles"),
        "bytes": size, "source_file": source.get("file_name"), "source_bytes": source_bytes,
        "times_smaller": round(source_bytes / max(size, 1), 2) if source_bytes else None,
        "image_bytes": image, "image_bits_per_pixel": round(8 * image / (W * H), 4),
        "associated": associated, "other_bytes": size - image - associated_bytes,
        "associated_images": m.get("associated", []), "deidentified": m.get("deidentified", False),
        "created": m.get("created"), "encoder": m.get("encoder"),
        **quality_summary(m.get("quality")),
        "level_dimensions": [list(d) for d in s.level_dimensions],
        **_content_entries(m.get("content")),
        "properties": s.properties,
    }
    if "operating_point" in m:  # a variable-rate model's point (format 4): NAME@P codes at this rate again
        d["operating_point"] = f"{m['model']['name']}@{s.properties['wsicodec.operating-point']}"
    d["summary"] = summary(d)
    return d


def quality_summary(record: Any) -> dict[str, Any]:
    """The ``info`` lines of a store's ``quality`` record (docs/format.md): how its operating
    point was chosen and, for a target, the figure measured on the sample. Empty for stores
    written before it was recorded."""
    if not isinstance(record, dict):
        return {}
    point = record.get("operating_point") or {}
    label = str(point.get("model", "?")) + (f"@{point['rate']}" if point.get("rate") is not None else "")
    out: dict[str, Any] = {"operating_point": label, "chosen_by": record.get("chosen_by")}
    cal = record.get("calibration")
    if record.get("chosen_by") == "quality":
        out["quality"] = record.get("quality")
        out["quality_matched"] = bool(record.get("matched"))
    if isinstance(cal, dict) and isinstance(cal.get("point"), dict) and isinstance(cal.get("jpeg"), dict):
        p, j = cal["point"], cal["jpeg"]
        out["calibration"] = (f"on {cal.get('set')}: {p.get('bpp', 0):.3f} bpp, PSNR {p.get('psnr', 0):.2f} dB, "
                              f"MS-SSIM {p.get('ms_ssim', 0):.4f}; "
                              f"JPEG q{j.get('quality')}: {j.get('bpp', 0):.3f} bpp, "
                              f"PSNR {j.get('psnr', 0):.2f} dB, MS-SSIM {j.get('ms_ssim', 0):.4f}")
    if record.get("chosen_by") == "target":
        t, m, sample = record.get("target") or {}, record.get("measured") or {}, record.get("sample") or {}
        out["target"] = f"{t.get('metric')}={t.get('value')}"
        out["target_measured"] = (f"{m.get(t.get('metric'))} on {len(sample.get('tiles', []))} sampled tissue tiles "
                                  f"(seed {sample.get('seed')}); there PSNR {m.get('psnr')} dB, MS-SSIM "
                                  f"{m.get('ms_ssim')}, {m.get('bpp')} bpp")
    return out


def summary(d: dict[str, Any]) -> list[str]:
    """A store's sizes in words: the store against its source, the image, and what the rest is."""
    lines = [f"store: {d['bytes']:,} bytes"]
    if d["source_bytes"]:
        ratio = d["source_bytes"] / max(d["bytes"], 1)
        than = f"{ratio:.1f} x smaller" if ratio >= 1 else f"{1 / ratio:.1f} x larger"
        lines[0] += f"; source {d['source_file'] or 'file'}: {d['source_bytes']:,} bytes; {than} than the source"
    W, H = d["dimensions"]
    lines.append(f"image ({W} x {H} pixels): {d['image_bytes']:,} bytes, "
                 f"{d['image_bits_per_pixel']:.3f} bits per pixel")
    rest = [f"{name} {a['bytes']:,} bytes ({a['kept_as']})" for name, a in d["associated"].items()]
    rest.append(f"metadata and tile map {d['other_bytes']:,} bytes")
    lines.append("the rest: " + ", ".join(rest))
    return lines


def describe(path: str | Path) -> dict[str, Any]:
    from wsicodec.remote import as_path, local_input

    path = as_path(path)  # a local path or an fsspec URL
    if not path.exists():
        raise StoreError(f"{path}: no such file or store")
    if path.is_dir() and (path / "zarr.json").exists():
        with WsiStore(path) as s:
            return _describe_store(s, path)
    from wsicodec.content import assess
    from wsicodec.slide import open_input

    with local_input(path) as local, open_input(local) as src:
        W, H = src.dimensions
        content = assess(src)
        refusal = content.refusal()
        samples = f"{src.channels} channel{'s' if src.channels != 1 else ''}, {src.bits}-bit {src.sample_kind}"
        return {
            "kind": "image" if src.is_image else "slide", "dimensions": [W, H], "mpp": list(src.mpp),
            "objective_power": src.objective_power, "vendor": src.vendor, "bytes": src.file_size,
            "bits_per_pixel": round(8 * src.file_size / (W * H), 4),
            "samples": samples + (f", {src.planes}" if src.planes else ""),
            **_content_entries(content.to_meta()),
            "compress": f"refused: {refusal}" if refusal else "codable",
            "associated_images": sorted(src.associated_images), "properties": src.properties,
        }


def _content_entries(content: dict[str, Any] | None) -> dict[str, Any]:
    """``content`` (what the image holds, in words) and, when there is one, ``content_note``."""
    if not isinstance(content, dict):
        return {"content": "not recorded"}
    out: dict[str, Any] = {"content": content.get("found", content.get("kind"))}
    if content.get("note"):
        out["content_note"] = content["note"]
    return out
