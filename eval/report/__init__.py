"""The report: every result of an output folder, in HTML and Markdown."""
