"""``edgert eval skab``: the command line of the SKAB evaluation (`edgert.evaluate.skab`) and
of its adaptive replay (``--adapt``, `edgert.evaluate.skab_adapt`).

It sits above both modules (the adaptive replay builds on the evaluation), so neither imports
the other back.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import skab, skab_adapt
from .skab import _r

__all__ = ["add_parser", "cmd_skab", "main"]


def cmd_skab(args) -> int:
    """``edgert eval skab``: the evaluation's report (and JSON line), or with ``--adapt`` the
    adaptive replay's (`edgert.evaluate.skab_adapt.cmd`). Returns the exit status."""
    if getattr(args, "adapt", "off") != "off":
        return skab_adapt.cmd(args)
    res = skab.guarded(lambda log: skab.evaluate(args.data, method=args.method, files=args.files,
                                                 seed=args.seed, epochs=args.epochs, log=log))
    if res is None:
        return 2
    print(skab.report(res), flush=True)
    if args.json:
        s, st = res["skab"], res["stream"]
        out = {"f1": _r(s["f1"], 4), "far": _r(s["far"], 3), "mar": _r(s["mar"], 3),
               "stream_f1": _r(st["f1"], 4), "stream_far": _r(st["far"], 3),
               "stream_mar": _r(st["mar"], 3), "files": res["files"],
               "trivial_f1": _r(res["trivial"]["f1"], 4),
               "windows_per_s": round(res["windows_per_s"]),
               "method": res["method"], "seed": res["seed"], "seconds": res["seconds"],
               "counts": {k: {m: res[k][m] for m in ("tp", "fp", "fn", "tn")}
                          for k in ("skab", "stream")}}
        if "level" in res:
            lv = res["level"]
            out.update({"level_f1": _r(lv["skab"]["f1"], 4), "level_far": _r(lv["skab"]["far"], 3),
                        "level_mar": _r(lv["skab"]["mar"], 3),
                        "level_stream_f1": _r(lv["stream"]["f1"], 4),
                        "level_stream_far": _r(lv["stream"]["far"], 3),
                        "level_stream_mar": _r(lv["stream"]["mar"], 3)})
        for k in ("tail_only", "baseline", "or", "and"):  # no end rule; baseline; combinations
            if k in res:
                out.update({f"{k}_{p}{m}": _r(res[k][row][m], 4 if m == "f1" else 3)
                            for row, p in (("skab", ""), ("stream", "stream_"))
                            for m in ("f1", "far", "mar")})
        print(json.dumps(out), flush=True)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``skab`` to ``subparsers`` (those of ``edgert eval``)."""
    p = subparsers.add_parser(
        "skab", help="SKAB outlier detection: per-file int8 autoencoders through the runtime "
                     "(trains: needs TensorFlow)",
        description=(skab.__doc__ or "").split("\n")[0])
    p.add_argument("--data", required=True,
                   help="SKAB's data/ directory (valve1/, valve2/, other/ ...; GPL-3.0, read "
                        "in place)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--files", type=int, default=None,
                   help="only the first N labelled files (valve1/0, valve1/1, ...)")
    p.add_argument("--method", choices=["edgeae", "convae"], default="edgeae",
                   help="edgeae (default): per-channel bottleneck AE, drift-aware channels; "
                        "convae: SKAB's Conv-AE baseline")
    p.add_argument("--seed", type=int, default=0, help="random seed (training and splits)")
    p.add_argument("--epochs", type=int, default=None,
                   help="cap the training epochs (quick runs; default 100 with early stopping)")
    skab_adapt.add_arguments(p)
    p.set_defaults(fn=cmd_skab)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgert.evaluate.skab_cli ARGS`` (= ``edgert eval skab ARGS``)."""
    p = argparse.ArgumentParser(prog="python -m edgert.evaluate.skab_cli")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = p.parse_args(["skab", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
