"""The docs stay navigable: every relative link in README.md and docs/ reaches a file (and a
heading, when it names one), every path in the README's file map exists, and the README
stays a front door."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: str) -> str:
    """The file's text without its fenced code blocks (a link there is code, not a link)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        return re.sub(r"^```.*?^```", "", fh.read(), flags=re.S | re.M)


def anchors(path: str) -> set:
    """GitHub's heading ids: lower case, punctuation but - and _ dropped, spaces as -."""
    ids = set()
    for line in prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            ids.add(text.replace(" ", "-"))
    return ids


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_reaches_a_file_and_heading(doc):
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(os.path.join(ROOT, dest)):
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest})")
    assert not broken, f"{doc}: broken links: {broken}"


def test_every_path_in_the_readme_file_map_exists():
    text = prose("README.md")
    table = text[text.index("## Files") :].split("\n## ")[0]
    missing = []
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", row.split("|")[1])
        # `training/report.py`, `report_plot.py`: a bare name lives beside the path before it
        folder = os.path.dirname(names[0])
        for name in names:
            path = name if "/" in name else os.path.join(folder, name)
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append(path)
    assert not missing, f"README's file map names paths that do not exist: {missing}"


def test_the_readme_stays_a_front_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len(lines) < 260, f"README.md has {len(lines)} lines; move detail into a guide in docs/"
