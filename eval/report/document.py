"""The report as a document: blocks built once (headings, notes, tables, figures), rendered to a self-contained
HTML page (figures embedded as data URIs, no scripts, no network: it opens offline) and to Markdown.

Text in a ``Note`` may hold `code` spans (between backticks): ``<code>`` in HTML, kept as is in Markdown.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Note:
    text: str
    emphasis: bool = False      # a table's caption: italic in Markdown


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list]


@dataclass
class Figure:
    path: Path                  # the PNG, embedded in HTML
    alt: str
    link: str                   # where Markdown points, relative to the report


Block = Heading | Note | Paragraph | Table | Figure

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;line-height:1.45;padding:0 1rem}h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #e3e7ef;
padding-bottom:.2rem;margin-top:2.2rem}table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.86rem}
th,td{border:1px solid #d5dbe6;padding:.3rem .55rem;text-align:left;vertical-align:top}th{background:#f1f4f9}
tr:nth-child(even) td{background:#fafbfd}.meta{color:#5b6578;font-size:.85rem}img{max-width:100%;margin:.4rem 0;
border:1px solid #e3e7ef}code{background:#f1f4f9;padding:0 .25rem;border-radius:3px}.note{color:#5b6578;font-size:.85rem}"""


def fmt(value, spec: str = ".3f") -> str:
    """A number for a table cell; ``n/a`` where undefined."""
    return "n/a" if value is None else format(value, spec)


def render_html(title: str, meta: str, blocks: list[Block]) -> str:
    """The self-contained page."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>"]
    parts += [_html(block) for block in blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(title: str, meta: str, blocks: list[Block]) -> str:
    """The Markdown summary."""
    lines = [f"# {title}", "", f"_{meta}_", ""]
    for block in blocks:
        lines += _markdown(block)
    return "\n".join(lines) + "\n"


def _html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Note):
        return f"<p class='note'>{_code_spans(html.escape(block.text))}</p>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    data = base64.b64encode(Path(block.path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(block.path).name)}">'


def _markdown(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + block.text, ""]
    if isinstance(block, Note):
        return [f"_{block.text}_" if block.emphasis else block.text, ""]
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, Table):
        esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
        return ["| " + " | ".join(block.header) + " |", "|" + " --- |" * len(block.header),
                *("| " + " | ".join(esc(c) for c in row) + " |" for row in block.rows), ""]
    return [f"![{block.alt}]({block.link})", ""]


def _code_spans(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
