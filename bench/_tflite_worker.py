"""Runs edgert's int8 model under tflite-runtime in another Python (``edgert bench --peers``).

tflite-runtime 2.14 (the newest) needs numpy < 2, so it usually lives in its own venv; the
parent (`peers.TfliteRuntimePeer`) starts this file with that venv's Python. It imports only
numpy and tflite_runtime (no edgert), so it runs there as is.

``python _tflite_worker.py IN.npz OUT.npz``. IN holds ``windows`` float32 [N, W, C] (the raw
windows of the stream, in order), ``bounds`` int64 (batch b = rows bounds[b]:bounds[b+1]),
``mean``, ``inv_std``, ``quant`` (in scale, in zero point, out scale, out zero point),
``model`` (path of the int8 dynamic-batch .tflite), ``rounds`` and ``threads``. Per batch,
timed: normalize + quantize (numpy), set_tensor, invoke, get_tensor, dequantize + mean squared
error (numpy). OUT: ``scores`` float32 [N] (first round) and ``call_ns`` int64 [rounds, batches].
"""

import sys
import time

import numpy as np


def main(src: str, dst: str) -> int:
    from tflite_runtime.interpreter import Interpreter

    z = np.load(src, allow_pickle=False)
    win, bounds = z["windows"], z["bounds"]
    mean, inv_std = z["mean"].astype(np.float32), z["inv_std"].astype(np.float32)
    isc, izp, osc, ozp = (float(v) for v in z["quant"])
    path, rounds, threads = str(z["model"]), int(z["rounds"]), int(z["threads"])
    interps = {}
    for k in sorted(set(np.diff(bounds).tolist())):  # one interpreter per batch size used
        it = Interpreter(model_path=path, num_threads=threads)
        i0 = it.get_input_details()[0]["index"]
        it.resize_tensor_input(i0, [k, 1, win.shape[1], win.shape[2]], strict=False)
        it.allocate_tensors()
        interps[k] = (it, i0, it.get_output_details()[0]["index"])
    scores = np.empty(len(win), np.float32)
    call_ns = np.empty((rounds, len(bounds) - 1), np.int64)
    for r in range(rounds):
        for b in range(len(bounds) - 1):
            lo, hi = bounds[b], bounds[b + 1]
            t0 = time.perf_counter_ns()
            it, i_in, i_out = interps[hi - lo]
            z = (win[lo:hi] - mean) * inv_std
            q = np.clip(np.rint(z / isc) + izp, -128, 127).astype(np.int8)[:, None]
            it.set_tensor(i_in, q)
            it.invoke()
            out = it.get_tensor(i_out)
            x = (q.astype(np.float32) - izp) * isc
            y = (out.astype(np.float32) - ozp) * osc
            s = ((x - y) ** 2).mean(axis=(1, 2, 3))
            call_ns[r, b] = time.perf_counter_ns() - t0
            if r == 0:
                scores[lo:hi] = s
    np.savez(dst, scores=scores, call_ns=call_ns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
