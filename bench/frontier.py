"""``edgert bench --only frontier``: the size frontier of model directories (issue 15).

For each model directory (default: the shipped ones; more with ``--frontier-models DIR,...``):

* **parameters**: the float model's count from the manifest (``training.params``) and the
  weights and biases of the int8 graph the daemon runs (the ``dynamic`` variant);
* **MACs per window**, counted from the int8 TFLite graph (`count_macs`): CONV_2D,
  DEPTHWISE_CONV_2D, TRANSPOSE_CONV and FULLY_CONNECTED ops, for the ``dynamic`` variant (what
  the CPU backend runs: the decoder as sub-pixel CONV_2D + RESHAPE) and the ``b1`` variant
  (TRANSPOSE_CONV);
* **µs per window at batch 32** through the daemon's LiteRT backend (``edgert.backends``,
  ``cpu``, one thread), wall and this process's CPU time (LiteRT runs on the calling thread),
  every model's timing loop interleaved with the others' in each round (so a burst of load from
  other processes hits all sizes alike), medians over rounds;
* the **ratio to the shipped model of the same kind** (motor-ae for autoencoders, motor-cnn for
  classifiers), timed in the same rounds: median of the per-round ratios (>1: faster).

The CPU model and its int8 instructions are recorded as the other sections do (`sysinfo`).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from . import micro, sysinfo

#: ops whose multiply-accumulates are counted (the others move or rescale data)
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")
MAX_MODELS = 16  # a bound on --frontier-models (each is loaded and timed every round)


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def op_macs(op: str, inputs: list, output: tuple) -> int:
    """Multiply-accumulates of one op, from its tensors' shapes.

    Args:
      op: the builtin op name (one of `MAC_OPS`).
      inputs: the op's input shapes in TFLite order (None for an absent optional input):
        CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: (input, weights, [bias]);
        TRANSPOSE_CONV: (output_shape, weights, input, [bias]).
      output: the output shape.
    Returns:
      the op's MACs for its whole batch. CONV_2D: every output element takes kh·kw·cin
      (weights [cout, kh, kw, cin]); DEPTHWISE_CONV_2D: kh·kw (weights [1, kh, kw, cout]);
      TRANSPOSE_CONV: every input element is scattered through kh·kw·cout weights (weights
      [cout, kh, kw, cin]; taps that land in the cropped 'same' border are counted: the kernel
      computes them); FULLY_CONNECTED: every output element takes ``in`` (weights [units, in]).
    Raises:
      ValueError for another op or shapes of the wrong rank.
    """
    def shape(i, rank):
        s = inputs[i] if i < len(inputs) else None
        if s is None or len(s) != rank:
            raise ValueError(f"{op}: input {i} has shape {s}, expected rank {rank}")
        return tuple(int(x) for x in s)

    if op == "CONV_2D":
        _, kh, kw, cin = shape(1, 4)
        return _prod(output) * kh * kw * cin
    if op == "DEPTHWISE_CONV_2D":
        _, kh, kw, _ = shape(1, 4)
        return _prod(output) * kh * kw
    if op == "TRANSPOSE_CONV":
        cout, kh, kw, _ = shape(1, 4)
        return _prod(shape(2, 4)) * kh * kw * cout
    if op == "FULLY_CONNECTED":
        _, n_in = shape(1, 2)
        return _prod(output) * n_in
    raise ValueError(f"no MAC rule for op {op}")


def _interpreter(path: str):
    """A LiteRT interpreter without the default (XNNPACK) delegate: the graph's own ops."""
    from edgert import tflite

    Interpreter = tflite.find()[0]
    try:
        from ai_edge_litert.interpreter import OpResolverType

        return Interpreter(model_path=path,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ImportError, TypeError, AttributeError):
        return Interpreter(model_path=path)


def count_macs(path, windows_per_input=None) -> dict:
    """MACs of one ``.tflite`` graph, per window.

    A dynamic-batch input (batch dimension -1 in the signature) is resized to batch 1 first.

    Args:
      path: the .tflite file.
      windows_per_input: windows one invoke scores; default: input shape[0] × shape[1] for an
        edgert input ([N, 1, W, C], or packed [1, B, W, C]), shape[0] otherwise.
    Returns:
      {"macs_per_window", "macs_per_invoke", "windows_per_invoke", "weights" (elements of the
      counted ops' weights and biases), "ops": [{"op", "macs", "output"}]}
    Raises:
      ValueError naming the file when it cannot be read as a TFLite graph.
    """
    path = str(path)
    try:
        it = _interpreter(path)
        inp = it.get_input_details()[0]
        sig = list(inp.get("shape_signature", inp["shape"]))
        if sig and int(sig[0]) == -1:  # dynamic batch: one window per invoke
            it.resize_tensor_input(inp["index"], [1, *[int(x) for x in inp["shape"][1:]]])
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        tensors = {t["index"]: t for t in it.get_tensor_details()}
        ops_details = it._get_ops_details()
    except (ValueError, RuntimeError, OSError) as exc:
        raise ValueError(f"{path}: not a readable TFLite graph ({exc})") from None
    in_shape = [int(x) for x in inp["shape"]]
    if windows_per_input is None:
        windows_per_input = in_shape[0] * in_shape[1] if len(in_shape) == 4 else in_shape[0]

    def shp(i):
        return None if i < 0 else tuple(int(x) for x in tensors[i]["shape"])

    ops, total, weights = [], 0, 0
    for od in ops_details:
        name = od["op_name"]
        if name not in MAC_OPS:
            continue
        ins = [shp(i) for i in od["inputs"]]
        out = shp(od["outputs"][0])
        macs = op_macs(name, ins, out)
        total += macs
        # weights and bias: input 1 and the last optional one (TRANSPOSE_CONV: 1 and 3)
        w_idx = [1, 3] if name == "TRANSPOSE_CONV" else [1, 2]
        weights += sum(_prod(ins[j]) for j in w_idx if j < len(ins) and ins[j] is not None)
        ops.append({"op": name, "macs": macs, "output": list(out)})
    return {"macs_per_window": total // max(1, windows_per_input), "macs_per_invoke": total,
            "windows_per_invoke": windows_per_input, "weights": weights, "ops": ops}


def load_models(dirs) -> list:
    """The model directories to compare, loaded and verified.

    Args:
      dirs: names of shipped models or directory paths (a comma-separated string or a list).
    Returns:
      a list of `edgert.models.Model`, in the order given, duplicates dropped.
    Raises:
      ValueError with one line naming the directory at fault.
    """
    from edgert import models

    items = dirs.split(",") if isinstance(dirs, str) else list(dirs)
    items = [str(x).strip() for x in items if str(x).strip()]
    if not items:
        raise ValueError("--frontier-models: no model directory given")
    if len(items) > MAX_MODELS:
        raise ValueError(f"--frontier-models: {len(items)} directories, at most {MAX_MODELS}")
    out, seen = [], set()
    for d in items:
        try:
            m = models.load(d)
        except Exception as exc:  # noqa: BLE001 - ModelError, OSError, JSON errors: one line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"--frontier-models {d}: not a usable model directory ({msg})") from None
        if "dynamic" not in m.variants:
            raise ValueError(f"--frontier-models {d}: no 'dynamic' variant (the CPU backend runs it)")
        key = str(Path(m.dir).resolve())
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def references(ms: list) -> dict:
    """{kind: the shipped model of that kind} for every kind in `ms` (the ratios' denominators);
    a kind with no shipped model refers to the first model of that kind given."""
    from edgert import models

    refs = {}
    for name in models.shipped():
        try:
            m = models.load(name)
        except Exception:  # noqa: BLE001 - a broken shipped model: no reference from it
            continue
        refs.setdefault(m.kind, m)
    return {m.kind: refs.get(m.kind, next(x for x in ms if x.kind == m.kind)) for m in ms}


def describe(m) -> dict:
    """Static figures of one model: name, dir, kind, filters, params, MACs per window."""
    tr = m.manifest.get("training") or {}
    cfg = tr.get("config") or {}
    row = {"name": m.name, "dir": str(m.dir), "kind": m.kind, "filters": cfg.get("filters"),
           "epochs": cfg.get("epochs"), "command": tr.get("command"), "params": tr.get("params")}
    for vn in ("dynamic", "b1"):
        v = m.variants.get(vn)
        if v is None:
            continue
        c = count_macs(v.path, windows_per_input=v.rows * (v.batch or 1) if v.batch else None)
        row[f"macs_per_window_{vn}"] = c["macs_per_window"]
        row[f"int8_weights_{vn}"] = c["weights"]
        row[f"ops_{vn}"] = c["ops"]
    row["macs_per_window"] = row.get("macs_per_window_dynamic")
    return row


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def measure(dirs=None, rounds: int = 5, target_s: float = 0.2, batch: int = 32, log=None) -> dict:
    """The frontier section.

    Args:
      dirs: model directories or shipped names (default: every shipped model).
      rounds: timing rounds; in each, every model's loop of ~`target_s` runs once (interleaved).
      target_s: seconds per model per round.
      batch: windows per invoke (the daemon's max_batch).
    Returns:
      a JSON-safe dict: machine, settings, ``models`` (one row per model: static figures,
      µs/window wall and CPU per round and their medians, ratios to the shipped model).
    Raises:
      ValueError for a bad model directory (one line naming it).
    """
    from edgert import backends, models

    if rounds < 1 or not 1 <= batch <= 4096 or not 0 < target_s <= 60:
        raise ValueError("frontier: rounds >= 1, batch in 1..4096, target_s in (0, 60]")
    ms = load_models(dirs if dirs else models.shipped())
    refs = references(ms)
    timed = list(ms)
    for r in refs.values():  # the shipped reference is timed in the same rounds
        if all(str(Path(r.dir).resolve()) != str(Path(x.dir).resolve()) for x in timed):
            timed.append(r)
    rows = [describe(m) for m in timed]
    runs, loops = [], []
    try:
        for m in timed:
            b = backends.create("cpu", m, max_batch=batch)
            runs.append(b)
            micro.fill_input(b, m)
            loops.append(micro._calibrate(b.run, (batch,), target_s))
        wall = [[] for _ in timed]
        cpu = [[] for _ in timed]
        for rnd in range(rounds):
            # rotate the order each round: no size always runs right after another's cache misses
            order = [(rnd + j) % len(timed) for j in range(len(timed))]
            for j in order:
                w, c = micro._loop(runs[j].run, (batch,), loops[j])
                wall[j].append(w / loops[j] / batch * 1e6)
                cpu[j].append(c / loops[j] / batch * 1e6)
            if log:
                log(f"  round {rnd + 1}/{rounds}: " + ", ".join(
                    f"{m.name} {wall[j][-1]:.2f} µs ({cpu[j][-1]:.2f} CPU)" for j, m in enumerate(timed)))
        backend_name = runs[0].name if runs else None
    finally:
        for b in runs:
            b.close()
    index = {str(Path(m.dir).resolve()): j for j, m in enumerate(timed)}
    for j, (m, row) in enumerate(zip(timed, rows)):
        ref = index[str(Path(refs[m.kind].dir).resolve())]
        row.update({
            "reference": timed[ref].name,
            "us_per_window": round(_median(wall[j]), 3),
            "cpu_us_per_window": round(_median(cpu[j]), 3),
            "us_per_window_rounds": [round(x, 3) for x in wall[j]],
            "cpu_us_per_window_rounds": [round(x, 3) for x in cpu[j]],
            # >1: this model is that many times faster than the shipped one, per round, median
            "speedup_wall": round(_median([wall[ref][i] / wall[j][i] for i in range(rounds)
                                           if wall[j][i] > 0]), 3),
            "speedup_cpu": round(_median([cpu[ref][i] / cpu[j][i] for i in range(rounds)
                                          if cpu[j][i] > 0]), 3),
            "macs_over_reference": (round(row["macs_per_window"] / rows[ref]["macs_per_window"], 3)
                                    if row.get("macs_per_window") and rows[ref].get("macs_per_window")
                                    else None),
            "in_list": j < len(ms),
        })
    return {"machine": {"cpu": sysinfo.cpu_model(), "int8": sysinfo.cpu_int8()},
            "python": sys.version.split()[0], "backend": backend_name, "batch": batch,
            "rounds": rounds, "target_s": target_s, "models": rows}


def render_lines(r: dict) -> list:
    """The frontier section as text: one row per model."""
    int8 = (r.get("machine") or {}).get("int8") or {}
    lines = [f"size frontier ({r.get('backend')}, batch {r.get('batch')}, {r.get('rounds')} interleaved "
             f"rounds; {(r.get('machine') or {}).get('cpu')}, {int8.get('kind', '?')})",
             f"  {'model':<22} {'kind':<12} {'filters':<12} {'params':>7} {'MACs/win':>9} "
             f"{'µs/win':>7} {'CPU µs':>7} {'×wall':>6} {'×CPU':>6}  vs"]
    for m in r.get("models", []):
        lines.append(f"  {m['name'][:22]:<22} {m['kind'][:12]:<12} {str(m.get('filters'))[:12]:<12} "
                     f"{m.get('params') or 0:>7,} {m.get('macs_per_window') or 0:>9,} "
                     f"{m['us_per_window']:>7.2f} {m['cpu_us_per_window']:>7.2f} "
                     f"{m['speedup_wall']:>6.2f} {m['speedup_cpu']:>6.2f}  {m['reference']}")
    return lines


def main(argv=None) -> int:
    """``python -m edgert.bench.frontier [--models DIR,...] [--rounds N] [--seconds S] [--out F]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m edgert.bench.frontier", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="model directories or shipped names (default: the shipped ones)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--seconds", type=float, default=0.2, help="seconds per model per round (default 0.2)")
    p.add_argument("--batch", type=int, default=32, help="windows per invoke (default 32)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        r = measure(a.models, rounds=a.rounds, target_s=a.seconds, batch=a.batch, log=log)
    except ValueError as exc:
        print(f"edgert bench frontier: {exc}", file=sys.stderr)
        return 2
    print("\n".join(render_lines(r)), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
