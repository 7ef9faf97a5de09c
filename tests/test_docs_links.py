"""Every relative link and picture of the README and the user guide leads somewhere.

A link to a file names one that exists; a ``#anchor`` is a heading of the page
it points into (or of the same page), spelled as GitHub spells heading
anchors. Links in code (fenced blocks and `inline code`) are not links, and
neither are addresses with a scheme (``https:``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
# [text](target) and ![alt](target); text may hold brackets escaped or nested once, a target no space.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The page without its code: fenced blocks dropped, inline code spans made plain words."""
    return INLINE_CODE.sub("code", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link texts kept, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated one gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def relative_links(page: Path) -> list[str]:
    """The targets of a page's links and pictures that point into this repository."""
    targets = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def broken(page: Path) -> list[str]:
    """Each link of ``page`` that leads nowhere, with the reason."""
    problems = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        into = (page.parent / path).resolve() if path else page
        if not into.exists():
            problems.append(f"{target}: no file {into.relative_to(ROOT) if into.is_relative_to(ROOT) else into}")
        elif anchor and (into.suffix != ".md" or anchor not in anchors(into)):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {into.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_picture_leads_somewhere(page):
    assert not broken(page), f"{page.relative_to(ROOT)}: {broken(page)}"


def test_the_pages_are_found_and_linked():
    assert len(PAGES) >= 12 and all(page.exists() for page in PAGES), PAGES
    readme = relative_links(ROOT / "README.md")
    assert sum(target.startswith("docs/images/") for target in readme) == 3, readme  # the three pictures
    guide = {page.name for page in PAGES if page.parent == ROOT / "docs"}
    linked = {Path(target.partition("#")[0]).name for target in readme}
    assert guide <= linked, f"README.md links no page {sorted(guide - linked)}"


def test_slug_spells_anchors_as_github_does():
    assert slug("`--cadence` for `video` and `zoom`") == "--cadence-for-video-and-zoom"
    assert slug("Lanes: `--batch` and `--warmup`") == "lanes---batch-and---warmup"
    assert slug("Zoom colour over 300 frames (2026-11-27)") == "zoom-colour-over-300-frames-2026-11-27"
    assert slug("The GPU round on the H200 (2026-11-27, 4c2ddf1)") == "the-gpu-round-on-the-h200-2026-11-27-4c2ddf1"


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Two words\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#two-words) [gone](docs/b.md) [no anchor](docs/a.md#not-a-heading) "
        "![picture](docs/missing.png) [web](https://example.org/x.md) `[code](docs/c.md)` [self](#nowhere)\n"
    )
    assert [problem.split(":")[0] for problem in broken(page)] == [
        "docs/b.md", "docs/a.md#not-a-heading", "docs/missing.png", "#nowhere",
    ]  # fmt: skip
