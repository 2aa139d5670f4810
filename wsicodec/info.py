"""``wsicodec info``: what a store or a slide holds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wsicodec.errors import StoreError
from wsicodec.store import WsiStore, store_size


def describe(path: str | Path) -> dict[str, Any]:
    from wsicodec.remote import as_path, local_input

    path = as_path(path)  # a local path or an fsspec URL
    if not path.exists():
        raise StoreError(f"{path}: no such file or store")
    if path.is_dir() and (path / "zarr.json").exists():
        with WsiStore(path) as s:
            m = s.meta
            W, H = s.dimensions
            size = store_size(path)
            latent_size = store_size(path / "latents")  # the coded image, without associated images
            return {
                "kind": "wsicodec store", "format_version": m["format_version"],
                "dimensions": [W, H], "mpp": m.get("mpp"), "objective_power": m.get("objective_power"),
                "vendor": m.get("vendor"), "model": m["model"]["name"], "model_sha256": m["model"]["sha256"],
                "tile_size": m["tile_size"], "tiles": m.get("tiles"), "bytes": size,
                "bits_per_pixel": round(8 * size / (W * H), 4),
                "latent_bytes": latent_size, "latent_bits_per_pixel": round(8 * latent_size / (W * H), 4),
                "source_file": m["source"]["file_name"], "source_bytes": m["source"]["file_size"],
                "ratio_to_source": round(m["source"]["file_size"] / max(size, 1), 3),
                "associated_images": m.get("associated", []), "deidentified": m.get("deidentified", False),
                "created": m.get("created"), "encoder": m.get("encoder"),
                "level_dimensions": [list(d) for d in s.level_dimensions],
                "properties": s.properties,
            }
    from wsicodec.slide import open_input

    with local_input(path) as local, open_input(local) as src:
        W, H = src.dimensions
        return {
            "kind": "image" if src.is_image else "slide", "dimensions": [W, H], "mpp": list(src.mpp),
            "objective_power": src.objective_power, "vendor": src.vendor, "bytes": src.file_size,
            "bits_per_pixel": round(8 * src.file_size / (W * H), 4),
            "associated_images": sorted(src.associated_images), "properties": src.properties,
        }
