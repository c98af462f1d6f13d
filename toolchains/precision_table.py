"""Pulsar2's quantization precision table: find it, read it by its column headers, keep every row.

`pulsar2 build` with `precision_analysis` prints (pulsar2-docs-en, user_guides_advanced/
advanced_build_guides.md, "Detailed explanation layer by layer") a rich table titled
`Quant Precision Table【PerLayer Reference】` (or `【EndToEnd Reference】`) with eight columns
`Operator | Type | Output Tensor | Shape | DType | QDType | Cosin | MSE`, one row per layer, and saves it
to `<output_dir>/quant/debug/precision_analysis_table.txt`. The cosine is found by its header, never by
position: the last number of a row is the MSE. Docker without a TTY gives rich 80 columns, so cells wrap
onto several lines (long words fold mid-word); a console without UTF-8 draws the box in ASCII.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import PipelineError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TITLE = re.compile(r"precision\s+table", re.IGNORECASE)
_ANALYSIS = re.compile(r"[【\[]([^】\]]+)[】\]]")
_BARS = "│┃|║"
_SEPARATOR_CHARS = set("─━═-=+┼╇╋┿╪├┤┡┩┏┓┗┛┳┻┠┨┯┷┌┐└┘┬┴╭╮╰╯╞╡╟╢│┃|║ ")
COSINE_HEADERS = ("cosin", "cosine", "cosine similarity")


class PrecisionTableError(PipelineError):
    """The precision table is there but cannot be read (no cosine column, a row that is not a number)."""


@dataclass(frozen=True)
class LayerPrecision:
    operator: str
    type: str
    output: str
    cosine: float
    mse: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "operator": self.operator,
            "type": self.type,
            "output": self.output,
            "cosine": self.cosine,
            "mse": self.mse,
        }


@dataclass(frozen=True)
class PrecisionTable:
    analysis: str  # from the title: "EndToEnd Reference", "PerLayer Reference", ...
    layers: tuple[LayerPrecision, ...]
    text: str  # the table as printed

    @property
    def final_cosine(self) -> float:
        """The model output's cosine: the table's last row."""
        return self.layers[-1].cosine

    def worst(self, count: int = 5) -> list[LayerPrecision]:
        return sorted(self.layers, key=lambda layer: layer.cosine)[:count]

    def to_json(self) -> dict[str, object]:
        return {
            "analysis": self.analysis,
            "final_cosine": self.final_cosine,
            "layers": [layer.to_json() for layer in self.layers],
        }


def describe_layers(layers: list[dict[str, object]]) -> str:
    """Layers as the report keeps them (LayerPrecision.to_json), in words: `name 0.99870, ...`."""
    return ", ".join(f"{layer['operator']} {layer['cosine']:.5f}" for layer in layers)


def find_precision_table(text: str) -> PrecisionTable | None:
    """The last precision table in a build log or in precision_analysis_table.txt; None if there is none."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    titles = [i for i, line in enumerate(lines) if _TITLE.search(line)]
    start = titles[-1] + 1 if titles else 0
    title = lines[titles[-1]] if titles else ""
    body = _table_lines(lines[start:])
    if not body:
        return None
    analysis = _ANALYSIS.search(title)
    blocks = _blocks(body)
    if len(blocks) < 2:
        raise PrecisionTableError("the precision table has a header but no rows")
    columns = _Columns.of(blocks[0])
    return PrecisionTable(
        analysis=analysis.group(1).strip() if analysis else "unknown",
        layers=tuple(_layer(columns, row) for row in blocks[1:]),
        text="\n".join(([title] if title else []) + body),
    )


def _table_lines(lines: list[str]) -> list[str]:
    """From the table's top border to the last line that is part of the box."""
    body: list[str] = []
    for line in lines:
        stripped = line.strip()
        in_box = bool(stripped) and (stripped[0] in _BARS or _is_separator(stripped))
        if in_box:
            body.append(line)
        elif body:
            break
    return body


def _is_separator(line: str) -> bool:
    return set(line) <= _SEPARATOR_CHARS and any(c in line for c in "─━═-=")


def _blocks(body: list[str]) -> list[list[list[str]]]:
    """Logical rows: the content lines between two separators, each split into its cells."""
    blocks: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in body:
        stripped = line.strip()
        if _is_separator(stripped):
            if current:
                blocks.append(current)
            current = []
        else:
            current.append(re.split(f"[{_BARS}]", stripped)[1:-1])
    if current:
        blocks.append(current)
    return blocks


def _join(fragments: list[str]) -> str:
    """A wrapped cell's text. Rich pads cells with one space each side; a fragment that reaches the far
    edge was folded mid-word (names and numbers have no spaces), so the next one joins without a space."""
    text, folded = "", False
    for fragment in fragments:
        content = fragment.strip()
        if content:
            text = f"{text}{'' if folded or not text else ' '}{content}"
        folded = bool(content) and len(fragment) - len(fragment.rstrip()) <= 1
    return text


def _cells(block: list[list[str]]) -> list[str]:
    width = max(len(line) for line in block)
    return [_join([line[i] for line in block if i < len(line)]) for i in range(width)]


def _column(headers: list[str], *names: str) -> int | None:
    wanted = {name.replace(" ", "") for name in names}
    for index, header in enumerate(headers):
        if header.lower().replace(" ", "") in wanted:
            return index
    return None


@dataclass(frozen=True)
class _Columns:
    """Where each field sits, read once from the header."""

    headers: list[str]
    cosine: int
    mse: int | None
    operator: int | None
    type: int | None
    output: int | None

    @classmethod
    def of(cls, header_block: list[list[str]]) -> _Columns:
        headers = _cells(header_block)
        cosine = _column(headers, *COSINE_HEADERS)
        if cosine is None:
            raise PrecisionTableError(f"the precision table has no cosine column (columns: {' | '.join(headers)})")
        return cls(
            headers,
            cosine,
            _column(headers, "mse"),
            _column(headers, "operator", "layer", "op"),
            _column(headers, "type", "op type"),
            _column(headers, "output tensor", "output"),
        )


def _layer(columns: _Columns, row_block: list[list[str]]) -> LayerPrecision:
    cells = _cells(row_block)
    if len(cells) != len(columns.headers):
        raise PrecisionTableError(f"a precision-table row has {len(cells)} cells, the header {len(columns.headers)}")

    def text(at: int | None) -> str:
        return cells[at] if at is not None else ""

    def number(at: int) -> float:
        try:
            return float(cells[at])
        except ValueError as exc:
            name = columns.headers[at]
            raise PrecisionTableError(f"{name} of layer {cells[0]!r} is not a number: {cells[at]!r}") from exc

    return LayerPrecision(
        operator=text(columns.operator),
        type=text(columns.type),
        output=text(columns.output),
        cosine=number(columns.cosine),
        mse=None if columns.mse is None else number(columns.mse),
    )
