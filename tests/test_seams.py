"""No seams: tiled coding equals coding the whole image at once."""
from __future__ import annotations

import pytest
from conftest import shared_cases
from PIL import Image

from wsicodec.checks import seam_check


@pytest.fixture()
def he_image(request, example_tissue, tmp_path):
    """The parametrized image: the example slide's tissue (330 x 280 px: tiles of 128 and partial
    edge tiles), or a shared H&E image where one is given."""
    if request.param != "example":
        return request.param
    path = tmp_path / "tissue.png"
    Image.fromarray(example_tissue[100:380, 200:530]).save(path)
    return path


@pytest.mark.parametrize("he_image", ["example", *shared_cases("data/histology/val", "glas-train_22.webp")],
                         indirect=True)
@pytest.mark.parametrize("model", ["tiny", "tiny-hyper"])  # a hyperprior's array holds whole chunks
def test_tiled_equals_whole_image_on_real_he(tiny_models, model, he_image):
    r = seam_check(he_image, model=model, tile=128, model_dir=tiny_models)
    assert r["latents_differing"] < 1e-4
    assert r["psnr_db"] >= 50 and r["border_psnr_db"] >= 50
    assert r["share_off_by_more_than_1"] == 0.0
    assert r["region_vs_full_max_abs_diff"] <= 1
