"""Page-Hinkley drift detection: finds level shifts quickly, stays quiet on stationary noise."""

import numpy as np

from edgert.drift import PageHinkley


def feed(ph, streams, batch=32):
    k = len(streams)
    n = streams[0].size
    hits = {i: [] for i in range(k)}
    for t in range(0, n, batch):
        vals = np.concatenate([s[t:t + batch] for s in streams])
        ii = np.repeat(np.arange(k), [min(batch, n - t)] * k)
        flags = ph.update(ii, vals)
        pos = np.tile(np.arange(t, min(t + batch, n)), k)
        for i, p in zip(ii[flags], pos[flags]):
            hits[int(i)].append(int(p))
    return hits


def test_detects_level_shift_up_and_down_and_not_noise():
    rng = np.random.default_rng(0)
    n = 6000
    quiet = rng.normal(10, 1, n)
    up = rng.normal(10, 1, n)
    up[3000:] += 2.0  # +2 sigma
    down = rng.normal(5, 0.1, n)
    down[4000:] -= 0.3  # -3 sigma, small absolute scale: standardized
    hits = feed(PageHinkley(3, delta=0.5, threshold=50), [quiet, up, down])
    assert hits[0] == []
    assert hits[1] and 3000 <= hits[1][0] <= 3100
    assert hits[2] and 4000 <= hits[2][0] <= 4100
