"""``fromscratch label``: the preference-collection web page and its export (issue #9)."""

from __future__ import annotations

import argparse


def add_label_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``label`` (serve the page) and ``label export``; filled in by the label work."""
