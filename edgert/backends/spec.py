"""Backend specifications: ``auto``, ``cpu``, ``edgetpu[:key=value,…]``, ``delegate:PATH[:key=value,…]``.

A specification may be a fallback chain, ``A|B|…``: each is tried in turn and the first that
builds runs (``auto`` is ``edgetpu|cpu``). Options are ``key=value`` pairs separated by
commas; a value may contain ``:`` (``device=usb:0``) but not ``,``. The path of a delegate ends
at the first ``:`` that is followed by ``key=``.

Examples::

    auto
    cpu
    edgetpu                                   every Edge TPU found, round-robin
    edgetpu:device=usb:0                      one device
    edgetpu:lib=/opt/coral/libedgetpu.so.1    another libedgetpu
    delegate:/usr/lib/libvx_delegate.so
    delegate:/opt/npu/libdelegate.so:cache_dir=/var/cache/npu,priority=high
    delegate:/opt/npu/libdelegate.so|cpu      a delegate, else the CPU
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KINDS = ("auto", "cpu", "edgetpu", "delegate")
USAGE = "auto|cpu|edgetpu[:key=value,…]|delegate:PATH[:key=value,…], or a fallback chain A|B"

_PATH_OPTS = re.compile(r"^(?P<path>.+?)(?::(?P<opts>[A-Za-z_][\w.\-]*=.*))?$", re.S)
_KEY = re.compile(r"^[A-Za-z_][\w.\-]*$")


@dataclass(frozen=True)
class Spec:
    """One backend of a chain.

    Attributes:
      kind: "cpu", "edgetpu" or "delegate" ("auto" is expanded by `parse`).
      path: the delegate library (kind "delegate").
      options: key=value options, in order.
      text: the specification as written (for messages).
      auto: True when this element came from expanding "auto".
    """

    kind: str
    path: str | None = None
    options: dict = field(default_factory=dict)
    text: str = ""
    auto: bool = False


def parse_options(text: str, where: str) -> dict:
    """``"a=1,b=x:y"`` → ``{"a": "1", "b": "x:y"}``; raises ValueError naming the bad item."""
    opts: dict[str, str] = {}
    if not text:
        return opts
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ValueError(f"{where}: option {item!r} is not key=value")
        if key in opts:
            raise ValueError(f"{where}: option {key!r} given twice")
        opts[key] = value
    return opts


def parse_one(text: str) -> list[Spec]:
    """One element of a chain (``auto`` expands to two)."""
    t = text.strip()
    if not t:
        raise ValueError(f"empty backend in {text!r} (expected {USAGE})")
    kind, sep, rest = t.partition(":")
    if kind == "auto":
        if sep:
            raise ValueError(f"backend 'auto' takes no options (got {t!r}); use edgetpu:… instead")
        return [Spec("edgetpu", None, {}, "edgetpu", auto=True), Spec("cpu", None, {}, "cpu", auto=True)]
    if kind == "cpu":
        if sep:
            raise ValueError(f"backend 'cpu' takes no options (got {t!r})")
        return [Spec("cpu", None, {}, t)]
    if kind == "edgetpu":
        return [Spec("edgetpu", None, parse_options(rest, t), t)]
    if kind == "delegate":
        m = _PATH_OPTS.match(rest)
        if not sep or not rest or m is None or not m.group("path").strip():
            raise ValueError(f"backend {t!r}: expected delegate:PATH[:key=value,…]")
        return [Spec("delegate", m.group("path"), parse_options(m.group("opts") or "", t), t)]
    raise ValueError(f"unknown backend {t!r} (expected {USAGE})")


def parse(text: str) -> list[Spec]:
    """A backend specification, possibly a chain ``A|B|…``, as a list of `Spec`.

    Raises:
      ValueError saying what is wrong and what is expected.
    """
    if not isinstance(text, str):
        raise ValueError(f"backend must be a string ({USAGE}), got {text!r}")
    chain: list[Spec] = []
    for part in text.split("|"):
        chain.extend(parse_one(part))
    return chain
