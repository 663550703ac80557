#!/usr/bin/env python
"""Django's command-line utility for the autopool example project."""
import os
import sys
from pathlib import Path

# Run from a checkout: the repository root (with the autopool package) goes on the path.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import autopool

    autopool.install()  # before Django loads its MySQL backend
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
