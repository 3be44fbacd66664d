"""judge.html, the judge's page: real tables (hit rates with intervals, the best non-LM method marked, the paired
comparisons, the verdict sentences of `interests.evaluation.judge`) and a plot sized for the page.

`wide_results` is the widest judge result the page has to hold: every target set, the longest method names the
judge makes, paired comparisons. tests/integration/end_to_end/test_pages_in_a_browser.py loads its page in Chromium.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from explore.judge_report import write_outputs
from interests.evaluation.judge import LevelResult, judge_level, pair_sentences, summary_sentences, target_masks

M = 3
# the longest names the judge gives its rows (variant_name, "+ prior", the mixture's rows, several SASRec seeds)
LM = "LM Qwen/Qwen2.5-0.5B-Instruct LoRA (50,000 examples)"
LM_PRIOR = f"{LM} + prior a=0.316"
MIXTURE, NO_LM, SEQREC = "mixture (served)", "mixture without the LM", "SASRec explores (3 seeds)"
METHODS = ("random", "popular", "transition counts", "cluster co-occurrence", "text similarity (MiniLM)", SEQREC,
           "sequence expert (cluster head)", "sequence expert (exact sums)", NO_LM, MIXTURE, LM, LM_PRIOR)


def wide_results() -> list[LevelResult]:
    """Two levels (8 and 16 clusters) of the planted synthetic data, scored by made-up methods (each a noisy
    copy of the truth), with every target set (the `liked` flags made up too) and the mixture's paired
    comparisons."""
    from interests.data.synthetic import make_synthetic
    from interests.novelty.examples import novel_transitions, split_by_time

    ds, truth = make_synthetic(n_clusters=16, n_users=200, seed=0)
    out = []
    for level, item_cluster in enumerate((truth.item_cluster // 2, truth.item_cluster)):
        n = int(item_cluster.max()) + 1
        split = split_by_time(novel_transitions(ds, item_cluster, 2))
        test = split.test
        rng = np.random.default_rng(level)
        masks = {**target_masks(ds, item_cluster, test), "liked": rng.random(len(test)) < 0.6}
        truth_scores = np.eye(n)[test.targets]
        scores = {name: truth_scores * (i / len(METHODS)) + rng.random((len(test), n))
                  for i, name in enumerate(METHODS)}
        out.append(judge_level(level, n, split, masks, scores, {LM, LM_PRIOR, MIXTURE}, M, test.targets,
                               pairs=[(MIXTURE, NO_LM), (MIXTURE, SEQREC), (NO_LM, SEQREC)]))
    return out


class _Page(HTMLParser):
    """The page's tables (rows of cell texts, with each row's class) and images."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[tuple[str, list[str]]]] = []
        self.images: list[str] = []
        self.pre = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append((a.get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1][1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_the_page_has_a_table_per_target_set_with_the_best_baseline_marked_and_the_pairs(tmp_path: Path) -> None:
    results = wide_results()
    path = write_outputs(results, M, {"dataset": "synthetic", "catalog_version": "abc", "models": ["lm"]}, tmp_path)
    text = path.read_text()
    page = _Page()
    page.feed(text)
    # the settings, then per level and target set the methods and the pairs
    assert len(page.tables) == 1 + len(results) * 3 * 2
    tables = page.tables[1:]
    for r in results:
        for target in ("any", "liked", "sticky"):
            methods, pairs = tables.pop(0), tables.pop(0)
            rows = {cells[0].removesuffix("best non-LM"): (cls, cells) for cls, cells in methods[2:]}
            assert list(rows) == list(METHODS)
            best = r.best[target]
            assert best is not None and rows[best][0] == "best" and rows[best][1][0].endswith("best non-LM")
            assert [name for name, (cls, _) in rows.items() if "best" in cls] == [best]
            for name, (cls, cells) in rows.items():
                row = r.methods[name].rows[target]
                assert cells[1] == f"{row['hit']:.3f}" and cells[2] == f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}"
                assert ("lm" in cls) == r.methods[name].is_lm
                vs = row.get("vs_best")
                assert cells[-2:] == ([f"+{vs['won']} / -{vs['lost']}", f"{vs['p']:.3g}"] if vs else ["", ""])
            assert [cells[:2] for _, cells in pairs[1:]] == [[MIXTURE, NO_LM], [MIXTURE, SEQREC], [NO_LM, SEQREC]]
            first = r.pairs[target][0]
            assert pairs[1][1][2:6] == [f"{first['diff']:+.3f}", f"{first['ci95'][0]:+.3f} to {first['ci95'][1]:+.3f}",
                                        f"+{first['won']} / -{first['lost']}", f"{first['p']:.3g}"]
            # the verdicts in words, as the judge words them
            for sentence in summary_sentences(r, target) + pair_sentences(r, target):
                assert sentence in text.replace("&#x27;", "'")
            assert len(summary_sentences(r, target)) == 3 and len(pair_sentences(r, target)) == 3
    # one image, embedded, about 1,200 px wide; the text tables only in a closed <details>
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    from matplotlib.image import imread

    height, width = imread(io.BytesIO((tmp_path / "hit_by_level.png").read_bytes())).shape[:2]
    assert 900 <= width <= 1250 and height <= 700, (width, height)
    assert page.pre == 1 and re.search(r"<details><summary>[^<]*<code>explore novelty eval</code>", text)


def test_a_table_without_a_language_model_or_ratings_says_so(tmp_path: Path) -> None:
    r = wide_results()[0]
    for name in (LM, LM_PRIOR, MIXTURE):
        del r.methods[name]
    r.counts["liked"] = None
    r.pairs = {}
    text = write_outputs([r], M, {"dataset": "synthetic"}, tmp_path).read_text()
    assert f"No language model in this table; the best non-LM method is {r.best['any']}." in text
    assert "Not available: the data has no ratings." in text and "Paired comparisons" not in text
