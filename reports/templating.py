"""The one Jinja environment of every HTML page (the report, the releases page, the machines page): the
templates folder and the filters their templates share, so a filter means the same on every page."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jinja2

from reports.text import compact, duration, is_missing, percent

TEMPLATE_DIR = Path(__file__).parent / "templates"


def sort_value(value: Any) -> str:
    """A table cell's ``data-sort`` value: empty for a missing value, else its text."""
    return "" if is_missing(value) else str(value)


def environment(**filters: Callable[..., Any]) -> jinja2.Environment:
    """The environment with the shared filters (``num``, ``pct`` of a value already in percent, ``sortval``,
    ``missing``) and the ``duration`` global, plus a page's own ``filters``."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=compact, pct=percent, sortval=sort_value, missing=is_missing, **filters)
    env.globals["duration"] = duration
    return env
