"""``wsicodec bench``: rate–distortion benchmark of wsicodec against classical codecs
(:func:`wsicodec.bench.runner.run_benchmark`) and the metric-response study of the paper's
Fig. 1 (:func:`wsicodec.bench.distortions.run_distortions`)."""
from __future__ import annotations

__all__ = ["run_benchmark", "run_distortions"]


def run_benchmark(*args, **kwargs):
    from wsicodec.bench.runner import run_benchmark as run

    return run(*args, **kwargs)


def run_distortions(*args, **kwargs):
    from wsicodec.bench.distortions import run_distortions as run

    return run(*args, **kwargs)
