"""Paper-reproduction and research code: run from the repo root as ``python -m experiments.NAME``.

Not installed with the package. It may import ``memadapter``, ``memadapter.modeling`` and
``memadapter.training``; nothing installed imports it (``tests/test_import_direction.py``).
Each command and the result file it regenerates: ``experiments/README.md``.
"""
