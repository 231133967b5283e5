"""Shipped model directories (installed as ``edgert.compiled_models``).

Each sub-directory ``<name>/`` holds ``manifest.json`` and the ``.tflite`` files it lists;
the manifest format is described in docs/design.md ("Model directory") and checked by
``edgert.models``. ``motor-ae`` is written by ``python -m edgert.train`` (the exact command,
seed and TensorFlow version are recorded in its manifest).
"""
