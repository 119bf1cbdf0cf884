"""Fetch-and-parse benchmark: ``spindle fetch --parse`` against Scrapy and aiohttp scripts.

    python -m bench.fetch_parse [--pages N] [--concurrency C] [--repeat R] [--only NAME,...]

Generates N HTML pages (default 20,000, about 50 KiB each: a title, paragraphs,
about 100 links; the same bytes on every run) into a temporary directory, serves
them from its own nginx on 127.0.0.1 (:func:`bench.fetch.nginx`), and has every
runner fetch all of them with at most C requests in flight (default 100), parse
each with lxml (:func:`bench.parse_work.extract`) and write one JSON line per page
(its URL, title and number of links) to a file.

::

    harness ──▶ nginx (127.0.0.1) serving /pages/0.html ... /pages/N-1.html
       │
       ├──▶ python -m spindle fetch URLS -o OUT --parse bench.parse_work:parse ...
       └──▶ python -m bench.fetch_parse_peers NAME URLS OUT C
            (one fresh process group per run: timed whole, start-up included;
             its RSS sampled, then the group killed)

Every output is checked against the pages as generated: N records, one per URL,
each with the page's title and number of links; otherwise the row says **WRONG**
and what was seen, not a figure. Runs go round-robin; the table shows medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from . import compile_spindle
from .fetch import fail, find_nginx, measure, nginx, versions
from .fetch_parse_peers import PEERS

#: Seconds a run may take before it is stopped and marked as such.
LIMIT = 600.0
#: Bytes a generated page aims at (each ends a little above it).
PAGE_BYTES = 50 * 1024
#: The rows the ratio is taken against: the single-process peers.
REFERENCES = ("scrapy", "aiohttp-uvloop")

#: Each ``spindle fetch`` row: its flags beyond URLS, -o, --parse, --robots and -q.
#: ``--workers`` sets both the fetch and the parse processes; ``--concurrency`` and
#: ``--per-host`` are totals, shared evenly between the fetch processes.
SPINDLE = {
    "spindle-1": (
        "spindle fetch --parse, --workers 1",
        ["--workers", "1", "--concurrency", "{c}", "--per-host", "{c}"],
    ),
    "spindle": (
        "spindle fetch --parse, a worker per core",
        ["--concurrency", "{c}", "--per-host", "{c}"],
    ),
}
RUNNERS = [*SPINDLE, *PEERS]
LABELS = {
    **{name: label for name, (label, _) in SPINDLE.items()},
    **{name: label for name, (label, _) in PEERS.items()},
}


# -- the pages ------------------------------------------------------------------------------

_VOCABULARY = (
    "spindle thread loom weave shuttle bobbin warp weft yarn fibre wool cotton linen silk "
    "pattern needle stitch fabric textile mill carding twist ply skein hank dye indigo "
    "madder woad flax hemp jute spinner weaver wheel distaff whorl treadle heddle reed "
    "selvage tapestry brocade damask velvet tweed serge gauze muslin calico chintz worsted "
    "the of and a to in is was for on with as by at from that this which an be are it "
    "history market village river winter harvest museum guild apprentice merchant ledger"
)
WORDS = _VOCABULARY.split()


def _paragraphs(count: int) -> list[str]:
    """A fixed pool of paragraph texts (about 400 bytes each) the pages draw from."""
    rng = random.Random(0)
    pool = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randrange(50, 80))
        words[0] = words[0].capitalize()
        emphasis = rng.randrange(len(words))
        words[emphasis] = f"<em>{words[emphasis]}</em>"
        pool.append(" ".join(words) + ".")
    return pool


def page(index: int, total: int, pool: list[str]) -> tuple[bytes, str, int]:
    """Page ``index`` of ``total``: its HTML, its title as a parser gives it back, and
    its number of links. The same index always gives the same bytes."""
    rng = random.Random(index)
    topic = " ".join(rng.choices(WORDS, k=3))
    title = f"Page {index}: {topic} & {rng.choice(WORDS)}"
    links = rng.randrange(90, 111)

    def link() -> str:
        target, words = rng.randrange(total), " ".join(rng.choices(WORDS, k=2))
        return f'<a href="/pages/{target}.html">{words}</a>'

    nav = "".join(f"<li>{link()}</li>" for _ in range(10))
    foot = "".join(f"<li>{link()}</li>" for _ in range(5))
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title.replace('&', '&amp;')}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="stylesheet" href="/static/site.css">\n'
        '<script src="/static/app.js" defer></script>\n</head>\n<body>\n'
        f'<header><a id="top"></a><nav class="main"><ul>{nav}</ul></nav></header>\n'
        f'<main><article id="page-{index}">\n<h1>{topic}</h1>\n'
    )
    tail = (
        "</article></main>\n"
        f'<footer><p>&copy; 2026 spindle weavers</p><ul class="links">{foot}</ul></footer>\n'
        "</body>\n</html>\n"
    )
    inline = links - 15  # the links in paragraphs, about 45 bytes each
    body: list[str] = []
    size = len(head) + len(tail) + 45 * inline
    while size < PAGE_BYTES:
        if len(body) % 6 == 0:
            section = f'<h2 id="s{len(body)}">{" ".join(rng.choices(WORDS, k=4))}</h2>\n'
            body.append(section)
            size += len(section)
        paragraph = f"<p>{rng.choice(pool)}</p>\n"
        body.append(paragraph)
        size += len(paragraph)
    # The links in paragraphs, spread evenly over them, at the end of each.
    spots = [i for i, part in enumerate(body) if part.startswith("<p>")]
    for k in range(inline):
        at = spots[k * len(spots) // inline]
        body[at] = body[at][: -len("</p>\n")] + f" See {link()}.</p>\n"
    html = head + "".join(body) + tail
    return html.encode(), title, links


def write_pages(www: Path, total: int) -> dict[str, tuple[str, int]]:
    """Write the pages under ``www/pages``; give each page's path its title and links."""
    (www / "pages").mkdir()
    pool = _paragraphs(400)
    expected = {}
    for index in range(total):
        html, title, links = page(index, total, pool)
        (www / "pages" / f"{index}.html").write_bytes(html)
        expected[f"/pages/{index}.html"] = (title, links)
    return expected


# -- running ---------------------------------------------------------------------------------


@dataclass
class Row:
    runner: str
    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None


def command(runner: str, urls: Path, output: Path, concurrency: int) -> list[str]:
    if runner in PEERS:
        return [
            sys.executable, "-m", "bench.fetch_parse_peers",
            runner, str(urls), str(output), str(concurrency),
        ]  # fmt: skip
    flags = [f.replace("{c}", str(concurrency)) for f in SPINDLE[runner][1]]
    return [
        sys.executable, "-m", "spindle", "fetch", str(urls), "-o", str(output),
        "--parse", "bench.parse_work:parse", "--robots", "ignore", *flags, "--quiet",
    ]  # fmt: skip


def run(
    runner: str, urls: Path, workdir: Path, concurrency: int, expected: dict[str, tuple[str, int]]
) -> dict[str, Any]:
    """One timed run of ``runner``, its output checked."""
    output = workdir / f"{runner}.jsonl"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = measure(command(runner, urls, output, concurrency), limit=LIMIT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        if done["stopped"] or done["status"] not in (0, 1):
            return fail(done, runner)
        problem = check(output, expected)
        failures = output.with_name(output.name + ".failures.jsonl")
        if problem is None and done["status"] == 1:
            problem = f"WRONG: exit 1, failures: {first_line(failures)}"
        if problem is not None:
            return {"error": problem}
    finally:
        for path in (output, output.with_name(output.name + ".failures.jsonl")):
            path.unlink(missing_ok=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "rate": len(expected) / done["wall"],
        "wall": done["wall"],
        "cpu": cpu,
        "peak_mb": done["peak_mb"],
    }


def first_line(path: Path) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()[:200]
    except OSError:
        return "none written"


def check(output: Path, expected: dict[str, tuple[str, int]]) -> str | None:
    """Why the output is not one right record per page, or None."""
    if not output.exists():
        return "WRONG: no output file"
    seen: set[str] = set()
    records = 0
    with open(output, "rb") as f:
        for line in f:
            records += 1
            record = orjson.loads(line)
            fields = record.get("result", record)  # spindle nests the parse result
            path = "/" + record["url"].split("/", 3)[-1]
            if path not in expected:
                return f"WRONG: a record for an unknown URL {record['url']}"
            if path in seen:
                return f"WRONG: two records for {record['url']}"
            seen.add(path)
            got = (fields.get("title"), fields.get("links"))
            if record.get("status") != 200 or got != expected[path]:
                return (
                    f"WRONG: {record['url']} gave status {record.get('status')}, {got}, "
                    f"expected 200, {expected[path]}"
                )
    if records != len(expected):
        return f"WRONG: {records:,} records for {len(expected):,} pages"
    return None


# -- the table ----------------------------------------------------------------------------------


def render(rows: list[Row], n: int, concurrency: int, mean_kib: float) -> str:
    best = max((row.median("rate") or 0.0 for row in rows if row.runner in REFERENCES), default=0)
    head = (
        f"### {n:,} pages of {mean_kib:.0f} KiB fetched, parsed with lxml and written, "
        f"{concurrency} in flight\n\n"
        "| runner | pages/s | vs best of Scrapy and aiohttp | wall s | spread | CPU s | peak MB "
        "| runs |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        if row.problem is not None:
            lines.append(f"| {row.label} | **{row.problem}** | | | | | | |")
            continue
        rate = row.median("rate") or 0.0
        ratio = f"{rate / best:.2f}x" if best else "-"
        walls = [r["wall"] for r in row.runs]
        spread = (max(walls) - min(walls)) / statistics.median(walls)
        lines.append(
            f"| {row.label} | {rate:,.0f} | {ratio} | {row.median('wall') or 0:.2f} | "
            f"{spread:.0%} | {row.median('cpu') or 0:.1f} | {row.median('peak_mb') or 0:.0f} | "
            f"{len(row.runs)} |"
        )
    return head + "\n".join(lines) + "\n"


def peer_versions() -> str:
    found = []
    for name in ("scrapy", "lxml", "twisted"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fetch_parse", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--pages", type=int, default=20_000, help="pages per run")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs per runner (median shown)")
    parser.add_argument(
        "--only",
        type=lambda text: [x.strip() for x in text.split(",") if x.strip()],
        default=RUNNERS,
        metavar="NAME[,NAME]",
        help=f"runners, from: {', '.join(RUNNERS)}",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(RUNNERS)
    if unknown:
        parser.error(
            f"unknown runner {', '.join(sorted(unknown))}; choose from {', '.join(RUNNERS)}"
        )
    if args.pages < 1 or args.concurrency < 2 or args.repeat < 1:
        parser.error("--pages must be at least 1, --concurrency 2, --repeat 1")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    compile_spindle()
    binary = find_nginx()
    if binary is None:
        print("bench.fetch_parse: nginx is not installed, nothing to measure")
        return
    n, concurrency = args.pages, args.concurrency
    print(
        f"# spindle fetch --parse benchmark\n\n{versions()}, {peer_versions()}\n\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load before {os.getloadavg()[0]:.2f}\n"
    )
    with tempfile.TemporaryDirectory(prefix="spindle-parse-bench-") as tmp:
        workdir = Path(tmp)
        with nginx(binary, workdir) as origin:
            t0 = time.perf_counter()
            expected = write_pages(workdir / "www", n)
            pages_bytes = sum(p.stat().st_size for p in (workdir / "www" / "pages").iterdir())
            print(
                f"{n:,} pages written in {time.perf_counter() - t0:.1f} s "
                f"({pages_bytes / n / 1024:.1f} KiB on average)",
                file=sys.stderr,
            )
            urls = workdir / "urls.txt"
            urls.write_text("".join(f"{origin}{path}\n" for path in expected))
            rows = [Row(name, LABELS[name]) for name in RUNNERS if name in args.only]
            for attempt in range(args.repeat):  # round-robin: a slow patch hits all rows
                for row in rows:
                    if row.problem is not None:
                        continue
                    print(f"{row.runner} run {attempt + 1}", file=sys.stderr)
                    result = run(row.runner, urls, workdir, concurrency, expected)
                    row.problem = result.get("error")
                    row.runs.append(result)
            print(render(rows, n, concurrency, pages_bytes / n / 1024))
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
