"""Every metric in README's metrics table was seen, with the labels README gives it, in some
scrape of a running tracepipe during this run of the suite (the harness records every scrape and
scrapes each process once more before stopping it). Runs last (file order); it checks only a run
of the whole suite: a subset cannot be expected to reach every metric."""

import re
from pathlib import Path

import pytest

import harness

ROOT = Path(__file__).resolve().parents[2]


def declared() -> set:
    """The metric names the code declares (pipeline/telemetry.rs `names`)."""
    text = (ROOT / "pipeline/telemetry.rs").read_text()
    return set(re.findall(r'pub const \w+: &str = "(tracepipe_[a-z0-9_]+)";', text))


def readme_rows(names: set) -> dict:
    """README's metrics table: metric name -> the label names its row gives. A row naming
    `base` / `_suffix` stands for base with its last words replaced by the suffix (whichever
    reading the code declares)."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in table.splitlines():
        if not line.startswith("| `tracepipe"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        labels = {l.strip() for l in re.sub(r"\(.*?\)", "", cells[2]).split(",") if l.strip()}
        forms = re.findall(r"`([a-z0-9_]+)`", cells[0])
        base = forms[0]
        out[base] = labels
        for alt in forms[1:]:
            if alt.startswith("tracepipe_"):
                out[alt] = labels
                continue
            words = alt.strip("_").split("_")
            parts = base.split("_")
            for k in (len(words), len(words) - 1):
                cand = "_".join(parts[:len(parts) - k] + words)
                if cand in names:
                    out[cand] = labels
                    break
            else:
                out[f"{base} / {alt}"] = labels  # matches nothing the code declares: reported below
    return out


def test_every_documented_metric_was_seen_with_its_labels(request):
    files = {Path(str(i.fspath)).name for i in request.session.items}
    every = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    if files != every or request.config.option.keyword or request.config.option.markexpr:
        pytest.skip(f"only a run of the whole e2e suite can reach every metric (this run: {len(files)} of {len(every)} files)")
    names = declared()
    rows = readme_rows(names)
    undocumented = sorted(names - set(rows))
    unknown = sorted(set(rows) - names)
    seen = {}
    for n, ls in harness.SEEN_METRICS.items():
        base = re.sub(r"_(bucket|sum|count)$", "", n) if n not in names else n
        seen.setdefault(base, set()).update(ls - {"le", "quantile"})
    missing = sorted(n for n in rows if n in names and n not in seen)
    wrong_labels = {n: (sorted(seen[n]), sorted(rows[n])) for n in rows if n in seen and seen[n] != rows[n]}
    assert not undocumented, f"declared in pipeline/telemetry.rs but not in README's table: {undocumented}"
    assert not unknown, f"in README's table but not declared: {unknown}"
    assert not missing, f"documented but never seen in any scrape of this run: {missing}"
    assert not wrong_labels, f"labels seen vs documented: {wrong_labels}"
