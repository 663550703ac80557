"""Sphinx configuration for autopool's documentation (``sphinx-build -W -b html docs docs/_build``)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

project = "django-mysql-autopool"
author = "autopool developers"
copyright = "2026, autopool developers"
release = re.search(r'__version__ = "([^"]+)"', (ROOT / "autopool" / "__init__.py").read_text()).group(1)
version = release

extensions: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "SQLAlchemy connection pools for Django's stock MySQL backend"}
highlight_language = "none"
