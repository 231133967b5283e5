"""Replay input: CSV (with or without header, ',' or ';'), NPZ, shipped recordings; clear errors."""

import numpy as np
import pytest

from edgert.replay import load_samples


def test_csv_variants(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("ia,ib,ic\n1,2,3\n4,5,6\n")
    b = tmp_path / "b.csv"
    b.write_text("1;2;3\n4;5;6\n")
    c = tmp_path / "c.csv"  # SKAB-like: a timestamp column and label columns are not channels
    c.write_text("datetime;x;y;anomaly;changepoint\n2020-01-01 00:00:00;1.5;2;0;0\n"
                 "2020-01-01 00:00:01;3;4.5;1;0\n")
    want = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    assert np.array_equal(load_samples(str(a)), want)
    assert np.array_equal(load_samples(str(b)), want)
    assert np.array_equal(load_samples(str(c)), np.array([[1.5, 2], [3, 4.5]], np.float32))
    assert np.array_equal(load_samples(str(a), ["ic", "ia"]), want[:, [2, 0]])
    with pytest.raises(ValueError, match="no column 'iz'"):
        load_samples(str(a), ["iz"])


def test_npz_npy_and_shipped(tmp_path):
    np.savez(tmp_path / "s.npz", samples=np.arange(6.0).reshape(3, 2))
    np.save(tmp_path / "v.npy", np.arange(4.0))
    assert load_samples(str(tmp_path / "s.npz")).shape == (3, 2)
    assert load_samples(str(tmp_path / "v.npy")).shape == (4, 1)
    assert load_samples("itsc:SC_HLT_005").shape == (1000, 3)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nope.csv: no such file"):
        load_samples(str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="bad.npy"):
        load_samples(str(bad))
