"""The project's prose: README.md, docs/, benchmarks/results/ and the kernel notes.

Checks that every markdown link and every cited result file resolves, that benchmarks/results/
lists each of its results in its index, and that the prose speaks of the project, not of the
sessions or numbered runs that produced it. Knows nothing about what the results say.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = sorted([ROOT / "README.md", ROOT / "benchmarks" / "kernels" / "NOTES.md",
               *(ROOT / "docs").glob("*.md"), *RESULTS.glob("*.md")])

# [text](target) and ![alt](target); the target ends at the first space or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
# `name.json`, `dir/name.md`, `plot.png`, `folder/`: a file name in backticks, no spaces or
# wildcards.
CITED = re.compile(r"`([\w./-]+(?:\.json|\.md|\.log|\.png|/))`")
# Words that date the prose: sessions, numbered runs, versioned file names, issue numbers.
HISTORY = re.compile(r"session|\bruns? \d|(?<![a-z])run\d|\bfirst runs?\b|_v\d+\b|\bissue \d",
                     re.IGNORECASE)


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _resolves(name: str, doc: Path) -> bool:
    # A doc cites files beside it, from the repository root, or among the results.
    return any((base / name).exists() for base in (doc.parent, ROOT, RESULTS))


def links(text: str) -> list[str]:
    """Local link targets of a markdown text, anchors dropped."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # http(s)://, mailto: or an anchor in the same page
        targets.append(target.split("#", 1)[0])
    return targets


def cited_results(doc: Path, text: str) -> list[str]:
    """Result files a doc names in backticks: every one in the results' and kernel notes' prose,
    and paths under benchmarks/results/ anywhere."""
    names = CITED.findall(text)
    if doc.parent == RESULTS or doc.name == "NOTES.md":
        return names
    return [n for n in names if n.startswith("benchmarks/results/")]


def test_link_extraction_keeps_local_targets_only():
    text = ("[a](x/y.md) ![b](img.png \"title\") [c](https://e.org/z.md) [d](#top) "
            "[e](z.md#part) `not_a_link.md`")
    assert links(text) == ["x/y.md", "img.png", "z.md"]


def test_history_pattern_tells_history_from_plain_words():
    for bad in ("Session 3", "session-4", "first runs", "run3", "run 5", "runs 1-2",
                "kernels_v1.json", "(issue 5)", "h100_session4.md", "h100_run5.json"):
        assert HISTORY.search(bad), bad
    for fine in ("runs sequentially", "a measured run", "earlier grid", "rerun", "re-run",
                 "version 2", "overrun 3"):
        assert not HISTORY.search(fine), fine


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_markdown_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    missing = [t for t in links(text) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_cited_result_files_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = [n for n in cited_results(doc, text) if not _resolves(n, doc)]
    assert not missing, f"{doc.relative_to(ROOT)} cites missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_prose_names_no_sessions_or_numbered_runs(doc):
    lines = doc.read_text(encoding="utf-8").splitlines()
    found = [f"{i}: {line.strip()}" for i, line in enumerate(lines, 1) if HISTORY.search(line)]
    assert not found, (f"{doc.relative_to(ROOT)} speaks of its history (cite the result or its "
                       "commit instead):\n" + "\n".join(found))


def test_results_index_lists_every_result():
    index = (RESULTS / "README.md").read_text(encoding="utf-8")
    listed = set(CITED.findall(index))
    entries = [p.name + ("/" if p.is_dir() else "") for p in RESULTS.iterdir()
               if p.name != "README.md"]
    assert entries, "benchmarks/results/ is empty"
    unlisted = sorted(e for e in entries if e not in listed)
    assert not unlisted, f"benchmarks/results/README.md does not list: {unlisted}"


def test_result_names_carry_no_history():
    named = [p.name for p in RESULTS.rglob("*") if HISTORY.search(p.name)]
    assert not named, f"result files named by session or run: {named}"
