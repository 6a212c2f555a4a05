"""mkdocs hooks: fill each page's ``<!-- generated: NAME -->`` lines from ``docs/generate.py``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # generate.py beside this file

import generate  # noqa: E402

_ROLE = re.compile(r":(?:func|mod|class|meth|data|attr|obj):(<code)")
_MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.M)


def on_config(config):
    """The checkout's ``bench`` and ``train`` for the generators (mkdocs puts ``sys.path``
    back after loading this file, so it is set here, when the build starts)."""
    if str(generate.ROOT) not in sys.path:
        sys.path.insert(0, str(generate.ROOT))
    return config


def on_page_content(html: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs' API)
    """Docstrings cite with Sphinx roles (``:func:`name```); mkdocstrings shows the name as code,
    so the role's prefix goes."""
    return _ROLE.sub(r"\1", html)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs' API)
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in generate.GENERATED:
            raise KeyError(f"{page.file.src_path}: no generated part named {name!r}")
        return generate.GENERATED[name]()

    return _MARKER.sub(fill, markdown)
