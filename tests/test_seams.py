"""No seams: tiled coding equals coding the whole image at once."""
from __future__ import annotations

import pytest
from conftest import shared_file

from wsicodec.checks import seam_check


@pytest.mark.parametrize("model", ["tiny", "tiny-hyper"])  # a hyperprior's array holds whole chunks
def test_tiled_equals_whole_image_on_real_he(tiny_models, model):
    img = shared_file("data", "histology", "val", "glas-train_22.webp")
    r = seam_check(img, model=model, tile=128, model_dir=tiny_models)
    assert r["latents_differing"] < 1e-4
    assert r["psnr_db"] >= 50 and r["border_psnr_db"] >= 50
    assert r["share_off_by_more_than_1"] == 0.0
    assert r["region_vs_full_max_abs_diff"] <= 1
