"""Config loading and the daemon's counters, histogram and rate-limited log."""

import logging

import numpy as np
import pytest

from edgert import config
from edgert.stats import LatencyHistogram, RateLimitedLog


def test_toml_keys_and_overrides(tmp_path):
    p = tmp_path / "e.toml"
    p.write_text('[edgert]\nlisten = "tcp://*:7000"\nmax_batch = 8\ngap_samples = 5\nsocket = "pull"\n')
    c = config.load(str(p), max_batch=16)
    assert c.listen == "tcp://*:7000" and c.max_batch == 16 and c.gap_samples == 5.0 and c.socket == "pull"


@pytest.mark.parametrize("text, msg", [
    ("nope = 1\n", "unknown key 'nope'"),
    ('max_batch = "8"\n', "'max_batch' must be int"),
    ('socket = "router"\n', "'socket'"),
    ("max_batch = 0\n", "'max_batch'"),
    ("[[[\n", "not valid TOML"),
])
def test_bad_config_names_key(tmp_path, text, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        config.load(str(p))


def test_missing_config_file():
    with pytest.raises(ValueError, match="not found"):
        config.load("/nonexistent/edgert.toml")


def test_latency_quantiles_close_to_numpy():
    rng = np.random.default_rng(1)
    x = rng.lognormal(mean=6, sigma=1, size=100_000)
    h = LatencyHistogram()
    for part in np.array_split(x, 37):
        h.add(part)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = np.quantile(x, q)
        assert exact <= h.quantile(q) <= exact * 1.03
    assert np.isnan(LatencyHistogram().quantile(0.5))
    # the sparse form keeps every count, in increasing bin order, and the same quantiles
    sp = h.sparse()
    assert sum(sp["counts"]) == x.size and sp["le_us"] == sorted(sp["le_us"])
    cum = np.cumsum(sp["counts"])
    i = int(np.searchsorted(cum, 0.999 * x.size))
    assert sp["le_us"][i] == pytest.approx(h.quantile(0.999), rel=0.03)


def test_rate_limited_log(caplog):
    lg = logging.getLogger("edgert.test")
    r = RateLimitedLog(period=60, burst=3, logger=lg)
    with caplog.at_level(logging.WARNING, logger="edgert.test"):
        for i in range(100):
            r.warning("k", f"msg {i}")
        r.warning("other", "different key")
    assert len(caplog.records) == 4
