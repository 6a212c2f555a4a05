"""Training configurations: ``configs/NAME.py`` defines ``get_config()`` for ``--config NAME``.

Installed (and in a checkout, through the editable install) this package is
``resnet_flax.configs``. Each configuration starts from ``_base.get_config()`` (every key, with
its meaning) and sets what differs; a configuration file of your own starts with
``from resnet_flax.configs import _base``. Files whose names start with ``_`` are not
configurations.
"""
