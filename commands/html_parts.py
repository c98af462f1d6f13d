"""What the HTML pages (the build report, a caption run's report) are made of: one style, escaped text,
tables, sections and inline thumbnails, so each page is one self-contained file (no script, no network)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

THUMBNAIL_PX = 160
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2430;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #d8dde6;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d8dde6;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f2f4f8}.ran{color:#0a7a32}.failed{color:#b3261e;font-weight:600}
.up{color:#5b6577}.note{color:#5b6577}.device{color:#0b5394}.photos{display:flex;flex-wrap:wrap;gap:14px}
.photo{width:250px}.photo img{display:block;border-radius:4px}code{background:#f2f4f8;padding:0 3px}
th,td.n{white-space:nowrap}
"""


def escape(value: object) -> str:
    return html.escape(str(value))


def html_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], raw: bool = False, nowrap: Sequence[int] = ()
) -> str:
    """`nowrap`: the columns of short values ("never run", "embed-vocab", "14.9 s") kept on one line."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in nowrap else ''}>{c if raw else escape(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def section(title: str, content: str) -> str:
    return f"<h2>{escape(title)}</h2>{content}"


def thumbnail(image: Any) -> str:
    small = image.copy()
    small.thumbnail((THUMBNAIL_PX * 3 // 2, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
