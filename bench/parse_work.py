"""The parse job of the fetch-and-parse benchmark, shared by every runner.

Every runner (``spindle fetch --parse bench.parse_work:parse``, the Scrapy spider,
the aiohttp and aiomultiprocess scripts) calls :func:`extract` on each page's body,
so they all do the same parsing work. Worker processes import this module, so it
imports nothing heavier than lxml.
"""

from __future__ import annotations

from typing import Any

import lxml.html


def extract(body: bytes) -> tuple[str, list[str]]:
    """The page's title and the targets of its links, parsed with lxml."""
    tree = lxml.html.document_fromstring(body)
    title = tree.findtext(".//title") or ""
    links = [href for href in tree.xpath("//a/@href") if href]
    return title.strip(), links


def parse(response: Any) -> dict[str, Any]:
    """For ``spindle fetch --parse bench.parse_work:parse``: the title and the
    number of links; the record around it names the URL."""
    title, links = extract(response.body)
    return {"title": title, "links": len(links)}
