"""Entropy decoding does not depend on thread counts: a store's latents read the
same in fresh processes with 1 or 2 torch threads and 1 or 16 concurrent zarr chunk decodes, and
equal what was written. (Encoding on a GPU and decoding here is in tests/test_cuda.py.)"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
from PIL import Image

from wsicodec.pipeline import compress
from wsicodec.store import WsiStore

READ = (
    "import sys, hashlib, torch, zarr\n"
    "torch.set_num_threads(int(sys.argv[2]))\n"
    "zarr.config.set({'async.concurrency': int(sys.argv[3]), 'threading.max_workers': int(sys.argv[3])})\n"
    "a = zarr.open_group(sys.argv[1], mode='r')['latents'][...]\n"
    "print(hashlib.sha256(a.tobytes()).hexdigest())\n"
)


def test_latents_identical_across_thread_counts(tiny_models, he_crop, tmp_path):
    Image.fromarray(he_crop).save(tmp_path / "he.png")
    r = compress(tmp_path / "he.png", tmp_path / "he.zarr", model_dir=tiny_models, tile=64)
    with WsiStore(r.output, model_dir=tiny_models) as s:
        written = hashlib.sha256(np.asarray(s.latents[...]).tobytes()).hexdigest()
    seen = set()
    for threads, concurrency in [(1, 1), (2, 16), (1, 16), (2, 1)]:
        out = subprocess.run([sys.executable, "-c", READ, str(r.output), str(threads), str(concurrency)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout.strip())
    assert seen == {written}
