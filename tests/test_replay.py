"""Replay input: CSV (with or without header, ',' or ';'), NPZ, shipped recordings; clear errors."""

import json

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


# -- channels are matched to the model by name ------------------------------------------------

MOTOR = ["ia", "ib", "ic"]


def _healthy():
    from edgert.data import itsc_recording
    return itsc_recording("SC_HLT_005")


def test_header_names_order_the_channels(tmp_path):
    from edgert.replay import load_recording, to_model_order

    x = _healthy()
    f = tmp_path / "cba.csv"  # the file: header ic,ib,ia
    np.savetxt(f, x[:, ::-1], delimiter=",", header="ic,ib,ia", comments="", fmt="%.6f")
    got = to_model_order(load_recording(str(f)), MOTOR, "motor-ae")
    assert np.allclose(got, x, atol=1e-6)
    # quoted names, any case, a time column (recognised by name) first
    q = tmp_path / "quoted.csv"
    q.write_text('"Timestamp","IB","IA","IC"\n0.000,2,1,3\n0.001,5,4,6\n')
    rec = load_recording(str(q))
    assert rec.names == ["IB", "IA", "IC"] and rec.skipped == ("Timestamp",)
    assert np.array_equal(to_model_order(rec, MOTOR, "motor-ae"), [[1, 2, 3], [4, 5, 6]])
    # --columns with a quoted header (broke before: the quotes stayed in the names)
    assert np.array_equal(load_recording(str(q), ["IA", "IB", "IC"]).samples, [[1, 2, 3], [4, 5, 6]])
    # a time column of another name, given with --time-column
    s = tmp_path / "secs.csv"
    s.write_text("secs,ia,ib,ic\n0.0,1,2,3\n")
    assert np.array_equal(to_model_order(load_recording(str(s), time_column="secs"), MOTOR, "m"), [[1, 2, 3]])
    for name in ("time", "t", "datetime"):
        p = tmp_path / f"{name}.csv"
        p.write_text(f"{name},ic,ia,ib\n2024-01-01 00:00:00,3,1,2\n" if name == "datetime"
                     else f"{name},ic,ia,ib\n0.5,3,1,2\n")
        assert np.array_equal(to_model_order(load_recording(str(p)), MOTOR, "m"), [[1, 2, 3]]), name


def test_names_that_do_not_match_are_refused(tmp_path):
    from edgert.replay import load_recording, to_model_order

    miss = tmp_path / "miss.csv"
    miss.write_text("ia,ib,iz\n1,2,3\n")
    with pytest.raises(ValueError, match=r"miss\.csv: .*missing ic and extra iz"):
        to_model_order(load_recording(str(miss)), MOTOR, "motor-ae")
    extra = tmp_path / "extra.csv"
    extra.write_text("ia,ib,ic,speed\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"extra\.csv: .*extra speed"):
        to_model_order(load_recording(str(extra)), MOTOR, "motor-ae")
    text = tmp_path / "text.csv"
    text.write_text("when,ia,ib,ic\nmonday,1,2,3\n")
    with pytest.raises(ValueError, match=r"text\.csv: column\(s\) 'when' are not numbers"):
        load_recording(str(text))
    # headerless: file order, but the count must match
    four = tmp_path / "four.csv"
    four.write_text("1,2,3,4\n5,6,7,8\n")
    with pytest.raises(ValueError, match=r"four\.csv: 4 channels, but model motor-ae takes 3 \(ia, ib, ic\)"):
        to_model_order(load_recording(str(four)), MOTOR, "motor-ae")
    three = tmp_path / "three.csv"
    three.write_text("1,2,3\n")
    assert np.array_equal(to_model_order(load_recording(str(three)), MOTOR, "m"), [[1, 2, 3]])
    # --columns in another order than the names say: refused, not sent as the wrong phase
    named = tmp_path / "named.csv"
    named.write_text("ia,ib,ic\n1,2,3\n")
    with pytest.raises(ValueError, match="column 'ic' would be sent as channel 'ia'"):
        to_model_order(load_recording(str(named), ["ic", "ib", "ia"]), MOTOR, "m")
    # NPZ: a 'channels' array names the columns
    np.savez(tmp_path / "n.npz", samples=np.array([[3.0, 1, 2]]), channels=np.array(["ic", "ia", "ib"]))
    assert np.array_equal(to_model_order(load_recording(str(tmp_path / "n.npz")), MOTOR, "m"), [[1, 2, 3]])
    np.savez(tmp_path / "n4.npz", samples=np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"n4\.npz: 4 channels, but model motor-ae takes 3"):
        to_model_order(load_recording(str(tmp_path / "n4.npz")), MOTOR, "motor-ae")


# -- the command, against a real daemon ----------------------------------------------------------

def _replay(capsys, *argv):
    """`edgert replay ARGV` in this process: (exit status, stdout, stderr)."""
    from edgert.cli import main

    try:
        rc = main(["replay", *map(str, argv)])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def daemon(tmp_path):
    from test_daemon import Running

    made = []

    def start(**cfg):
        cfg.setdefault("stats_interval_s", 0.2)
        r = Running(tmp_path, "ipc", **cfg)
        made.append(r)
        return r

    yield start
    for r in made:
        r.close()


def test_replay_reorders_a_header_by_name(tmp_path, capsys, daemon):
    import csv

    r = daemon(publish_scores=True)
    f = tmp_path / "motor.csv"
    np.savetxt(f, _healthy()[:, ::-1], delimiter=",", header="ic,ib,ia", comments="", fmt="%.6f")
    out = tmp_path / "ev.csv"
    rc, stdout, err = _replay(capsys, f, "--to", r.d.listen_endpoint, "--sensor", "m1", "--rate", 1000, "--fast",
                              "--events", r.d.events_endpoint, "--events-out", out)
    assert rc == 0, err
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 59
    assert sum(int(x["anomaly"]) for x in rows) == 0  # file order would flag all 59
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["windows"] == 59 and summary["dropped"] == 0


def test_four_channels_refused_before_sending(tmp_path, capsys):
    csv4 = tmp_path / "four.csv"
    np.savetxt(csv4, np.c_[_healthy(), _healthy()[:, 0]], delimiter=",")
    np.savez(tmp_path / "four.npz", samples=np.c_[_healthy(), _healthy()[:, 0]])
    for f in (csv4, tmp_path / "four.npz"):
        rc, _, err = _replay(capsys, f, "--to", f"ipc://{tmp_path}/nobody", "--sensor", "m1", "--rate", 1000,
                             "--wait", 0.5)
        assert rc == 2
        assert err.count("\n") == 1 and f"{f.name}: 4 channels, but model motor-ae takes 3 (ia, ib, ic)" in err


def _four_channel_model(tmp_path, name="motor-ae"):
    """A model directory whose manifest says 4 channels (enough for replay: it reads the manifest only)."""
    from edgert import models

    m = json.loads((models.resolve("motor-ae") / "manifest.json").read_text())
    m["name"] = name
    m["channels"] = ["ia", "ib", "ic", "speed"]
    m["normalization"] = {"mean": [0.0] * 4, "std": [1.0] * 4}
    m.pop("attribution", None)  # per-channel statistics of the 3 real channels
    for v in m["variants"].values():
        for k in ("input", "output"):
            v[k]["shape"][-1] = 4
    d = tmp_path / f"model-{name}"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_drops_the_daemon_counts_fail_the_replay(tmp_path, capsys, daemon):
    r = daemon(publish_scores=True)
    x = _healthy().copy()
    x[300, 1] = np.nan  # the daemon drops that block (nonfinite)
    f = tmp_path / "nan.csv"
    np.savetxt(f, x, delimiter=",", header="ia,ib,ic", comments="")
    rc, _, err = _replay(capsys, f, "--to", r.d.listen_endpoint, "--sensor", "m1", "--rate", 1000, "--fast",
                         "--events", r.d.events_endpoint)
    assert rc == 1
    assert "the daemon dropped 1 block from sensor m1: nonfinite (1)" in err
    # 4 channels while the daemon's model takes 3: every block dropped; named, not "--publish-scores"
    f4 = tmp_path / "four.csv"
    np.savetxt(f4, np.c_[_healthy(), _healthy()[:, 0]], delimiter=",", header="ia,ib,ic,speed", comments="")
    rc, _, err = _replay(capsys, f4, "--to", r.d.listen_endpoint, "--sensor", "m2", "--rate", 1000, "--fast",
                         "--model", _four_channel_model(tmp_path), "--events", r.d.events_endpoint,
                         "--events-out", tmp_path / "ev.csv")
    assert rc == 1
    assert "the daemon dropped 16 blocks from sensor m2: channels (16)" in err
    assert "publish-scores" not in err
    # and a daemon serving another model than --model is refused before anything is sent
    rc, _, err = _replay(capsys, f4, "--to", r.d.listen_endpoint, "--sensor", "m3", "--rate", 1000, "--fast",
                         "--model", _four_channel_model(tmp_path, "other"), "--events", r.d.events_endpoint)
    assert rc == 2 and "serves model motor-ae, not other" in err
    assert "m3" not in r.d.stats()["drops"]


def test_events_out_without_published_scores_says_why(tmp_path, capsys, daemon):
    r = daemon()  # no --publish-scores
    rc, _, err = _replay(capsys, "itsc:SC_HLT_005", "--to", r.d.listen_endpoint, "--sensor", "m1", "--rate", 1000,
                         "--fast", "--events", r.d.events_endpoint, "--events-out", tmp_path / "ev.csv")
    assert rc == 1
    assert "the daemon scored 59 windows from m1 but published no scores: start it with --publish-scores" in err


def test_push_fails_when_nothing_is_delivered(tmp_path, capsys, daemon):
    # nobody there: nothing may be queued and reported as sent
    rc, out, err = _replay(capsys, "itsc:SC_HLT_005", "--to", f"ipc://{tmp_path}/nobody", "--sensor", "m1",
                           "--rate", 1000, "--fast", "--socket", "push", "--wait", 1)
    assert rc == 1 and out == ""
    assert "nothing accepts connections on ipc://" in err
    # a SUB daemon: the PUSH connection never completes its handshake
    sub = daemon()
    rc, out, err = _replay(capsys, "itsc:SC_HLT_005", "--to", sub.d.listen_endpoint, "--sensor", "m1",
                           "--rate", 1000, "--fast", "--socket", "push", "--wait", 1)
    assert rc == 1 and out == ""
    assert "refuses a PUSH sensor: the daemon's input is a SUB socket" in err and "use --socket pub" in err
    assert sub.d.stats()["messages"] == 0


def test_push_to_a_pull_daemon(tmp_path, capsys, daemon):
    r = daemon(socket="pull")
    rc, out, err = _replay(capsys, "itsc:SC_HLT_005", "--to", r.d.listen_endpoint, "--sensor", "m1", "--rate", 1000,
                           "--fast", "--socket", "push", "--events", r.d.events_endpoint)
    assert rc == 0, err
    assert json.loads(out)["windows"] == 59


def test_list_names_the_shipped_recordings(capsys):
    rc, out, _ = _replay(capsys, "--list")
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 65
    assert "itsc:SC_A3_B0_C0_001\t30 % inter-turn short circuit, phase A" in lines
    assert "itsc:SC_HLT_005\thealthy" in lines
