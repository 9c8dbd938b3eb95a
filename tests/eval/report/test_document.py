"""The report's document (eval.report.document): blocks built once, rendered to HTML and Markdown, checked
against hand-written output."""

from __future__ import annotations

import base64

from ctssl.eval.report.document import Figure, Heading, Note, Paragraph, Table, fmt, render_html, render_markdown

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")


def _blocks(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.png").write_bytes(PNG)
    return [Heading("Results"), Note("caption <1>", emphasis=True), Table(["a", "b|c"], [[1, "x|y"]]),
            Note("Recipe `radnet12m`, after a paper"), Heading("Table 1", 3), Paragraph("plain & simple"),
            Figure(tmp_path / "figures" / "f.png", "a figure", "figures/f.png")]


def test_markdown_is_written_as_by_hand(tmp_path):
    assert render_markdown("T", "meta", _blocks(tmp_path)) == "\n".join([
        "# T", "", "_meta_", "", "## Results", "", "_caption <1>_", "", "| a | b|c |", "| --- | --- |",
        "| 1 | x\\|y |", "", "Recipe `radnet12m`, after a paper", "", "### Table 1", "", "plain & simple",
        "![a figure](figures/f.png)", "", ""])


def test_html_escapes_embeds_and_marks_code(tmp_path):
    page = render_html("T <x>", "meta", _blocks(tmp_path))
    assert page.startswith("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>T &lt;x&gt;</title>")
    assert "<h1>T &lt;x&gt;</h1><p class='meta'>meta</p>" in page
    assert "\n<h2>Results</h2>\n<p class='note'>caption &lt;1&gt;</p>\n" in page
    assert "<table><thead><tr><th>a</th><th>b|c</th></tr></thead><tbody><tr><td>1</td><td>x|y</td></tr>" in page
    assert "<p class='note'>Recipe <code>radnet12m</code>, after a paper</p>" in page
    assert "<h3>Table 1</h3>" in page and "<p>plain &amp; simple</p>" in page
    assert f'<img src="data:image/png;base64,{base64.b64encode(PNG).decode()}" alt="f.png">' in page
    assert page.endswith("</body></html>\n")


def test_undefined_numbers_read_n_a():
    assert (fmt(None), fmt(0.12345), fmt(-0.5, "+.1%")) == ("n/a", "0.123", "-50.0%")
