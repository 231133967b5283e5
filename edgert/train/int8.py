"""Converted int8 models run through LiteRT, scored exactly as the runtime scores them
(`Int8Model`), and the checks made with them (`packed_vs_b1`, `static_after_resize`)."""

from __future__ import annotations

import numpy as np

from .architectures import load_tf


def interpreter_cls():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT is a runtime dependency
        Interpreter = load_tf().lite.Interpreter
    return Interpreter


class Int8Model:
    """A converted model run through LiteRT, scored the way the runtime scores.

    Quantization follows the ``normalize_quantize`` kernel contract and the error follows the
    ``recon_error`` kernel contract (docs/design.md), in float64. A packed ``[1, B, W, C]``
    model takes windows B at a time as rows (``rows``).
    """

    def __init__(self, content: bytes, num_threads: int = 1, xnnpack: bool = True):
        self.content = content
        self._Interp = interpreter_cls()
        self._kw = {"num_threads": num_threads}
        if not xnnpack:  # TFLite's builtin kernels only (no default XNNPACK delegate)
            from ai_edge_litert.interpreter import OpResolverType

            self._kw["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._by_batch: dict[int, object] = {}
        it = self._Interp(model_content=content, **self._kw)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        self.in_shape = [int(v) for v in i["shape_signature"]]
        self.out_shape = [int(v) for v in o["shape_signature"]]
        self.in_dtype, self.out_dtype = np.dtype(i["dtype"]), np.dtype(o["dtype"])
        self.in_scale, self.in_zp = float(i["quantization"][0]), int(i["quantization"][1])
        self.out_scale, self.out_zp = float(o["quantization"][0]), int(o["quantization"][1])
        self.fixed_batch = self.in_shape[0] if self.in_shape[0] > 0 else None
        self.rows = self.in_shape[1]
        self._by_batch[int(i["shape"][0])] = it

    def io(self) -> dict:
        def one(shape, dtype, scale, zp):
            return {"shape": shape, "dtype": dtype.name, "scale": scale, "zero_point": zp}

        return {"input": one(self.in_shape, self.in_dtype, self.in_scale, self.in_zp),
                "output": one(self.out_shape, self.out_dtype, self.out_scale, self.out_zp)}

    def _interp(self, batch: int):
        it = self._by_batch.get(batch)
        if it is None:
            if self.fixed_batch is not None:
                raise ValueError(f"model has a fixed batch {self.fixed_batch}, asked for {batch}")
            it = self._Interp(model_content=self.content, **self._kw)
            idx = it.get_input_details()[0]["index"]
            it.resize_tensor_input(idx, [batch] + self.in_shape[1:], strict=True)
            it.allocate_tensors()
            self._by_batch[batch] = it
        return it

    def quantize(self, xn: np.ndarray) -> np.ndarray:
        q = np.rint(np.asarray(xn, np.float64) / self.in_scale + self.in_zp)
        return np.clip(q, -128, 127).astype(np.int8)

    def run_q(self, q: np.ndarray, batch: int | None = None) -> np.ndarray:
        """int8 ``[n, 1, W, C]`` in -> int8 ``[n, …]`` out (one row per window), invoking
        ``batch`` windows at a time (a partial last batch is zero-padded). A packed model takes
        ``rows`` windows per invoke as ``[1, rows, W, C]``; its output row j is returned as
        ``[1, …]`` like the other variants' rows."""
        if self.rows > 1:
            return self._run_packed(q)
        b = self.fixed_batch or batch or 32
        it = self._interp(b)
        iidx = it.get_input_details()[0]["index"]
        oidx = it.get_output_details()[0]["index"]
        out = None
        for s in range(0, len(q), b):
            chunk = q[s : s + b]
            k = len(chunk)
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k,) + q.shape[1:], q.dtype)])
            it.set_tensor(iidx, chunk)
            it.invoke()
            o = it.get_tensor(oidx)[:k]
            if out is None:
                out = np.empty((len(q),) + o.shape[1:], o.dtype)
            out[s : s + k] = o
        return out if out is not None else np.empty((0,) + tuple(self.out_shape[1:]), self.out_dtype)

    def _run_packed(self, q: np.ndarray) -> np.ndarray:
        B = self.rows
        it = self._interp(1)
        iidx = it.get_input_details()[0]["index"]
        oidx = it.get_output_details()[0]["index"]
        row_shape = (1, *self.out_shape[2:])
        out = np.empty((len(q),) + row_shape, self.out_dtype)
        buf = np.zeros((1, B) + q.shape[2:], q.dtype)
        for s in range(0, len(q), B):
            k = min(B, len(q) - s)
            buf[:] = 0
            buf[0, :k] = q[s : s + k, 0]
            it.set_tensor(iidx, buf)
            it.invoke()
            out[s : s + k] = it.get_tensor(oidx)[0, :k].reshape((k,) + row_shape)
        return out

    def errors(self, xn: np.ndarray, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n], per-channel MSE [n, C]) of normalized windows ``[n, 1, W, C]``."""
        q = self.quantize(xn)
        oq = self.run_q(q, batch)
        x = (q.astype(np.float64) - self.in_zp) * self.in_scale
        y = (oq.astype(np.float64) - self.out_zp) * self.out_scale
        ch = ((x - y) ** 2).mean(axis=(1, 2)).astype(np.float32)
        return ch.astype(np.float64).mean(axis=1).astype(np.float32), ch

    def logits(self, xn: np.ndarray, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(dequantized logits [n, K], int8 outputs [n, K]) of normalized windows."""
        oq = self.run_q(self.quantize(xn), batch).reshape(len(xn), -1)
        return (oq.astype(np.float64) - self.out_zp) * self.out_scale, oq


def float_errors(model, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = model.predict(xn, batch_size=256, verbose=0)
    ch = ((xn.astype(np.float64) - y) ** 2).mean(axis=(1, 2))
    return ch.mean(axis=1), ch


def float_logits(model, xn: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(xn, batch_size=256, verbose=0)).reshape(len(xn), -1)


def static_after_resize(content: bytes, cfg, batch: int) -> bool:
    """True when, after resize_tensor_input + allocate_tensors, the output tensor already has
    its memory (no dynamic tensors), so a zero-copy view can be taken before the first invoke."""
    it = interpreter_cls()(model_content=content, num_threads=1)
    shape = [int(v) for v in it.get_input_details()[0]["shape"]]
    it.resize_tensor_input(it.get_input_details()[0]["index"], [batch] + shape[1:], strict=True)
    it.allocate_tensors()
    try:
        view = it.tensor(it.get_output_details()[0]["index"])()
    except ValueError:
        return False
    return view.shape[0] == batch


def packed_vs_b1(packed: Int8Model, b1: Int8Model, xn: np.ndarray) -> dict:
    """Runs every window through b1 (one invoke each) and packed (rows per invoke) on the same
    int8 inputs and compares the int8 outputs row by row."""
    if (packed.in_scale, packed.in_zp) != (b1.in_scale, b1.in_zp):
        return {"packed_equals_b1": False, "packed_vs_b1_max_lsb": None,
                "packed_quantization_equals_b1": False}
    q = b1.quantize(xn)
    a = b1.run_q(q).astype(np.int32)
    p = packed.run_q(q).astype(np.int32).reshape(a.shape)
    same_q = (packed.out_scale, packed.out_zp) == (b1.out_scale, b1.out_zp)
    return {"packed_equals_b1": bool(same_q and np.array_equal(a, p)),
            "packed_vs_b1_max_lsb": int(np.abs(a - p).max()) if len(a) else 0,
            "packed_quantization_equals_b1": bool(same_q),
            "packed_rows": int(packed.rows)}
