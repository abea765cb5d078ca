"""`viral report`: one self-contained HTML page of a study or run folder.

- `inputs`: what the folder holds (study.json, each run's metrics, eval curve, predictions; analysis JSON);
- `figures`: matplotlib figures and image thumbnails as `data:` URIs;
- `html`: the page from a Jinja2 template (`templates/report.html.j2`): `write_html_report(folder) -> Path`.

It reads what `viral.study` and `viral.analysis` write and is imported by neither.
"""

from viral.report.html import write_html_report

__all__ = ["write_html_report"]
