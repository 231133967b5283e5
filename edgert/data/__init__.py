"""Shipped sample data.

``itsc.npz`` holds the ITSC dataset (inter-turn short circuits in a three-phase induction
motor): 65 recordings, each 1000 samples × 3 phase currents (a, b, c) at 1 kHz, float32,
keyed by recording name ("SC_HLT_001", "SC_A1_B0_C0_003", ...). 13 classes: ``SC_HLT``
(healthy) and 10/20/30/40 % short circuits in phase A (``SC_A{1-4}_B0_C0``), B
(``SC_A0_B{1-4}_C0``) or C (``SC_A0_B0_C{1-4}``), 5 recordings each.

Attribution: ITSC dataset, University of Guanajuato, Cardenas-Cornejo et al.,
Measurement 222:113680, 2023, MIT licence (text in ``LICENSE-ITSC`` beside this file).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["ITSC_SAMPLE_RATE_HZ", "ITSC_CHANNELS", "itsc_names", "itsc_recording", "itsc_class"]

ITSC_SAMPLE_RATE_HZ = 1000
ITSC_CHANNELS = ("ia", "ib", "ic")
_ITSC_FILE = "itsc.npz"


@lru_cache(maxsize=1)
def _itsc() -> dict[str, np.ndarray]:
    ref = resources.files(__name__).joinpath(_ITSC_FILE)
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        out = {}
        for k in sorted(z.files):
            a = np.ascontiguousarray(z[k], dtype=np.float32)
            a.setflags(write=False)
            out[k] = a
    return out


def itsc_names() -> list[str]:
    """Names of all shipped ITSC recordings, sorted ("SC_A0_B0_C1_001", ..., "SC_HLT_005")."""
    return list(_itsc())


def itsc_class(name: str) -> str:
    """Class of a recording name: "SC_HLT_003" -> "SC_HLT"."""
    return name.rsplit("_", 1)[0]


def itsc_recording(name: str) -> np.ndarray:
    """One recording as a read-only float32 array [1000, 3] (phase currents a, b, c).

    Raises KeyError naming the recording when it does not exist.
    """
    data = _itsc()
    try:
        return data[name]
    except KeyError:
        raise KeyError(f"no ITSC recording {name!r} (expected e.g. 'SC_HLT_001'; "
                       f"{len(data)} recordings shipped)") from None
