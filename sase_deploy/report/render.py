"""Renderers of a report document: Markdown for a pull-request comment, one-file HTML.

Importing this module does not import matplotlib; `render_html` loads it when called.
"""

from sase_deploy.report.render_html import render_html
from sase_deploy.report.render_markdown import render_markdown

__all__ = ["render_html", "render_markdown"]
