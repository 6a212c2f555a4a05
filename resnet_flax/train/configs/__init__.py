"""Training configs: ``configs/NAME.py`` defines ``get_config()`` for ``--config NAME``.

Each config starts from ``_base.get_config()`` (every key, with its meaning) and sets what
differs. Files whose names start with ``_`` are not configs.
"""
