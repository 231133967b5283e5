"""F1, FAR and MAR of binary decisions: the scoring every bench comparison shares (`peers`,
`naive`), in a module of its own so neither imports the other for it."""

from __future__ import annotations

import numpy as np


def quality(y_true, y_pred) -> dict:
    """F1, FAR and MAR of binary decisions (1 = anomalous): F1 = 2TP / (2TP + FP + FN), FAR =
    FP / (FP + TN), MAR = FN / (FN + TP), as fractions (None when undefined), with the counts."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"labels {t.shape} and decisions {p.shape} differ in shape")
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    return {"f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "far": fp / (fp + tn) if fp + tn else None,
            "mar": fn / (fn + tp) if fn + tp else None,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def pooled(parts: list[dict]) -> dict:
    """`quality` of several streams together, from their summed counts."""
    c = {k: sum(p[k] for p in parts) for k in ("tp", "fp", "fn", "tn")}
    return quality(np.r_[np.ones(c["tp"] + c["fn"], bool), np.zeros(c["fp"] + c["tn"], bool)],
                   np.r_[np.ones(c["tp"], bool), np.zeros(c["fn"], bool),
                         np.ones(c["fp"], bool), np.zeros(c["tn"], bool)])
