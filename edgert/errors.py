"""Exceptions shared across layers, so a low-level module can raise them without importing the
module that defines the concept (`edgert.scoring` checks manifest fields that `edgert.models`
reads: neither imports the other for the error type)."""

from __future__ import annotations


class ModelError(ValueError):
    """A model directory that cannot be used; the message names the file and the field."""
