"""dataset.html from a hand-made run directory: no engine, no model."""
import csv
import json

import pytest

from misalign.dataset_report import write_dataset_report
from misalign.errors import InputError

COLUMNS = ["dimension", "domain", "classified", "unknown", "expanded", "expansion_near_duplicates",
           "expansion_unusable", "removed_by_dedup", "sent_to_generation", "aligned_filtered",
           "misaligned_filtered", "truncated", "resampled", "recovered_by_resampling", "final_pairs"]
# (dimension, domain, classified, expanded, removed_by_dedup, sent, aligned_f, misaligned_f, recovered, final)
DOMAINS = [("safety", "Animal abuse", 7, 2, 1, 8, 5, 3, 2, 6),
           ("safety", "Self-harm", 4, 0, 0, 4, 1, 0, 0, 3),
           ("value", "Wealth", 11, 3, 2, 12, 9, 4, 1, 10),
           ("value", "Empty value", 0, 0, 0, 0, 0, 0, 0, 0),          # all zero: left out, counted
           ("cultural", "<b>Bold</b> & Co", 5, 1, 0, 6, 2, 2, 1, 5),
           ("cultural", "Dance", 2, 0, 1, 1, 0, 1, 0, 0)]
# hand-computed per-dimension totals: classified, expanded, removed by dedup, sent to generation,
# candidates filtered (aligned + misaligned), recovered by resampling, final pairs
FUNNEL_ROWS = {"safety": ("11", "2", "1", "12", "9 (6 + 3)", "2", "9"),
               "value": ("11", "3", "2", "12", "13 (9 + 4)", "1", "10"),
               "cultural": ("7", "1", "1", "7", "5 (2 + 3)", "1", "5")}
REASONS = {"aligned: judge says misaligned": 7, "misaligned: judge says aligned": 12,
           "aligned: truncated": 3, "misaligned: empty response": 1}


def make_run(tmp_path, reasons=REASONS, extra_column=False):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "stats.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + (["mystery_column"] if extra_column else []))
        writer.writeheader()
        for dim, dom, cls, exp, ded, sent, af, mf, rec, fin in DOMAINS:
            row = dict.fromkeys(COLUMNS[2:], 0)
            row.update(dimension=dim, domain=dom, classified=cls, expanded=exp, removed_by_dedup=ded,
                       sent_to_generation=sent, aligned_filtered=af, misaligned_filtered=mf,
                       recovered_by_resampling=rec, final_pairs=fin)
            if extra_column:
                row["mystery_column"] = 99
            writer.writerow(row)
    run = {"input": "prompts.jsonl", "input_rows": 30, "rejected_inputs": 1, "pairs": 24,
           "splits": {"train": 18, "validation": 3, "test": 3}, "dropped_pairs": 5,
           "cross_split_near_duplicate_rate": 0.0, "expansion": {"ok": 6}, "resampled_pairs": 8,
           "recovered_pairs": 4, "truncated_candidates": 3,
           "models": {"generator": "tiny (random-weight stand-in)"}, "role_warnings": ["judge is generator"],
           "dedup": {"features": "char4", "tau": 10}, "seed": 0}
    if reasons is not None:
        run["rejection_reasons"] = reasons
    (run_dir / "run.json").write_text(json.dumps(run))
    profile = [{"stage": "classify", "items_in": 30, "items_out": 30, "seconds": 1.5, "prompt_tokens": 900,
                "generated_tokens": 0, "cached_tokens": 0, "startup_seconds": 12.0,
                "engine_starts": {"MiniLM embedder": 1}, "prefix_cache_hit_rate": 0.25, "tokens_per_s": 600.0},
               {"stage": "dedup", "items_in": 36, "items_out": 32, "seconds": 0.01, "prompt_tokens": 0,
                "generated_tokens": 0, "startup_seconds": 0.0, "engine_starts": {},
                "prefix_cache_hit_rate": 0.0, "tokens_per_s": 0.0}]
    (run_dir / "profile.json").write_text(json.dumps(profile))
    return run_dir


def test_page_shows_funnel_totals_reasons_and_profile(tmp_path):
    run_dir = make_run(tmp_path)
    path = write_dataset_report(run_dir)
    assert path == run_dir / "dataset.html"
    assert (run_dir / "plots" / "funnel.png").read_bytes().startswith(b"\x89PNG")
    page = path.read_text(encoding="utf-8")
    assert "data:image/png;base64," in page
    # the funnel's per-dimension totals (hand-computed), as the table under the figure shows them
    for dim, counts in FUNNEL_ROWS.items():
        assert "<tr><td class=t>" + dim + "</td>" + "".join(f"<td>{c}</td>" for c in counts) + "</tr>" in page
    # per-domain table: the all-zero domain left out and counted; sorted by dimension, then final pairs
    assert "Empty value" not in page and "1 domains with nothing counted left out" in page
    assert page.index("Animal abuse") < page.index("Self-harm") < page.index("Wealth") \
        < page.index("&lt;b&gt;Bold&lt;/b&gt; &amp; Co") < page.index("Dance")
    assert "<b>Bold</b>" not in page
    # rejection reasons by count, with their share of all 23
    order = [page.index(f"<td class=t>{r}</td><td>{n}</td>") for r, n in
             (("judge says aligned", 12), ("judge says misaligned", 7), ("truncated", 3), ("empty response", 1))]
    assert order == sorted(order)
    assert "23 candidates turned down" in page and "52.2%" in page
    # warnings and profile
    assert "Stand-in models." in page and "judge is generator" in page
    assert "MiniLM embedder ×1" in page and "25.0%" in page and "600" in page
    assert "train 18, validation 3, test 3" in page
    assert "SimHash on char4 shingles, Hamming distance &lt;= 10" in page


def test_old_run_without_rejection_reasons(tmp_path):
    run_dir = make_run(tmp_path, reasons=None)
    page = write_dataset_report(run_dir).read_text(encoding="utf-8")
    assert "predates the record of rejection reasons" in page


def test_unknown_and_missing_columns(tmp_path):
    run_dir = make_run(tmp_path, extra_column=True)
    with open(run_dir / "stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [c for c in rows[0] if c not in ("expanded", "recovered_by_resampling")]    # an older layout
    with open(run_dir / "stats.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "profile.json").unlink()
    run = json.loads((run_dir / "run.json").read_text())
    run["leakage"] = {"rate": 0.05, "rows": 2, "pairs": 1, "criterion": "simhash <= 3 bits"}
    (run_dir / "run.json").write_text(json.dumps(run))
    page = write_dataset_report(run_dir).read_text(encoding="utf-8")
    # a column of a stage of the user's own is shown after the pipeline's; a missing one is not
    assert "<th>mystery column</th>" in page and "<th>recovered by resampling</th>" not in page
    assert "5.00% of rows (2 rows, 1 prompt pairs in leakage.csv; simhash &lt;= 3 bits)" in page
    assert "No per-stage profile recorded" in page


def test_missing_inputs_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="stats.csv"):
        write_dataset_report(tmp_path)
    run_dir = make_run(tmp_path)
    (run_dir / "run.json").unlink()
    with pytest.raises(InputError, match="run.json"):
        write_dataset_report(run_dir)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        write_dataset_report(run_dir)
