"""fat.evaluation.label_issues: cleanlab's multi-label ranking finds planted label errors, the
suggestion table is a valid `data.corrections` file, and `fat label-check` scores suggestions
against a provenance CSV (with clear errors on bad input)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fat.data import corrections
from fat.errors import DataError
from fat.evaluation import label_issues as li
from fat.evaluation.plots import save_png
from fat.tools import cli

CLASSES = ["a", "b", "c", "d", "e"]


def planted(n=300, n_wrong=24, seed=0):
    """(fnames, true multi-hot, given multi-hot, probs, wrong rows): a model that is right about the
    true labels (with noise), and `n_wrong` clips whose given label was swapped for another class."""
    rng = np.random.default_rng(seed)
    true = np.zeros((n, len(CLASSES)), dtype=np.float32)
    true[np.arange(n), rng.integers(0, len(CLASSES), n)] = 1
    two = rng.random(n) < 0.2
    true[np.flatnonzero(two), rng.integers(0, len(CLASSES), two.sum())] = 1
    probs = np.where(true > 0, rng.uniform(0.6, 0.97, true.shape), rng.uniform(0.01, 0.3, true.shape))
    given = true.copy()
    wrong = np.sort(rng.choice(n, n_wrong, replace=False))
    for i in wrong:
        on = np.flatnonzero(given[i])
        off = np.flatnonzero(given[i] == 0)
        given[i, rng.choice(on)] = 0
        given[i, rng.choice(off)] = 1
    fnames = [f"{i:04d}.wav" for i in range(n)]
    return fnames, true, given, probs, wrong


def test_planted_label_errors_are_found_and_ranked_first():
    fnames, true, given, probs, wrong = planted()
    flagged, scores = li.find_issues(given, probs)
    found = set(np.flatnonzero(flagged))
    assert len(found & set(wrong)) >= 0.75 * len(wrong)  # recall (cleanlab is conservative at the margin)
    assert len(found & set(wrong)) >= 0.9 * len(found)  # precision
    # the lowest label quality scores are the planted errors
    assert set(np.argsort(scores, kind="stable")[:len(wrong) // 2]) <= set(wrong)
    table = li.issue_table("noisy", fnames, given, probs, CLASSES, flagged, scores, label_threshold=0.5, top_k=2,
                           relabel_min_p=0.5)
    assert list(table.columns) == li.COLUMNS
    assert table["score"].is_monotonic_increasing
    hits = table[table["fname"].isin([fnames[i] for i in wrong])]
    # a relabel suggestion for a planted clip restores its true labels
    for _, row in hits[hits["action"] == "relabel"].iterrows():
        i = fnames.index(row["fname"])
        assert set(row["labels"].split(",")) == {CLASSES[c] for c in np.flatnonzero(true[i])}
        assert set(row["given"].split(",")) == {CLASSES[c] for c in np.flatnonzero(given[i])}
    assert (hits["action"] == "relabel").mean() > 0.8


def test_clean_labels_give_few_suggestions():
    _, true, _, probs, _ = planted()
    flagged, _ = li.find_issues(true, probs)  # the true labels: nothing is wrong
    assert flagged.sum() <= 3


def test_a_doubtful_clip_is_suggested_for_dropping_and_relabel_needs_confidence():
    fnames, _, given, probs, wrong = planted()
    flagged = np.zeros(len(fnames), dtype=bool)
    flagged[wrong[:2]] = True
    probs = probs.copy()
    probs[wrong[0]] = 0.2  # no class the model believes in
    table = li.issue_table("curated", fnames, given, probs, CLASSES, flagged, np.linspace(0, 1, len(fnames)),
                           label_threshold=0.5, top_k=2, relabel_min_p=0.5)
    row = table.set_index("fname").loc[fnames[wrong[0]]]
    assert row["action"] == "drop" and row["labels"] == "" and row["split"] == "curated"
    assert table.set_index("fname").loc[fnames[wrong[1]], "action"] == "relabel"


def test_small_splits_with_absent_or_universal_classes_are_handled():
    rng = np.random.default_rng(1)
    given = np.zeros((8, 5))
    given[:, 0] = 1  # every clip carries class 0; classes 3, 4 are never given
    given[np.arange(8), rng.integers(1, 3, 8)] = 1
    probs = rng.uniform(size=(8, 5))
    flagged, scores = li.find_issues(given, probs)
    assert flagged.shape == scores.shape == (8,) and ((0 <= scores) & (scores <= 1)).all()
    flagged, _ = li.find_issues(np.ones((4, 2)), np.full((4, 2), 0.5))
    assert not flagged.any()


def test_mismatched_shapes_and_unlabelled_clips_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        li.find_issues(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"1 clips have no label \(rows \[1\]\)"):
        li.find_issues(np.array([[1, 0], [0, 0], [0, 1]]), np.full((3, 2), 0.5))


def test_the_table_is_a_corrections_file_and_the_figure_renders(tmp_path):
    fnames, _, given, probs, _ = planted()
    flagged, scores = li.find_issues(given, probs)
    table = li.combine([li.issue_table(s, fnames, given, probs, CLASSES, flagged, scores, label_threshold=0.5,
                                       top_k=2, relabel_min_p=0.5) for s in ("noisy",)])
    path = tmp_path / "label_issues.csv"
    table.to_csv(path, index=False)
    read = corrections.read(path)
    assert list(read["fname"]) == list(table["fname"])
    assert set(read["action"]) <= {"relabel", "drop"}
    summary = li.summary(table, {"noisy": len(fnames)})
    assert summary["noisy"]["suggested"] == len(table) == summary["suggested"]
    save_png(li.figure(table, {"noisy": scores}, CLASSES), tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- precision / recall
def provenance_file(tmp_path, rows):
    path = tmp_path / "provenance.csv"
    pd.DataFrame(rows, columns=["split", "fname", "true_labels", "given_labels"]).to_csv(path, index=False)
    return path


PROV = [
    ("train_noisy", "n1.wav", "a", "b"),       # wrong
    ("train_noisy", "n2.wav", "a,b", "a"),     # wrong (lost a label)
    ("train_noisy", "n3.wav", "c", "c"),
    ("train_noisy", "n4.wav", "d", "d,e"),     # wrong (extra label)
    ("train_curated", "c1.wav", "a", "a"),
    ("test", "t1.wav", "a", "b"),              # not a training split: never counted
]


def test_precision_and_recall_of_the_top_n_against_a_planted_provenance(tmp_path):
    prov = li.read_provenance(provenance_file(tmp_path, PROV))
    issues = pd.DataFrame({"fname": ["n1.wav", "c1.wav", "n2.wav", "n3.wav"],
                           "action": ["relabel", "drop", "relabel", "drop"],
                           "labels": ["a", "", "a", ""]})
    out = li.evaluate(issues, prov, [1, 2, 3, 10])
    assert out["corrupted_clips"] == 3 and out["clips"] == 5
    assert out["per_split_corrupted"] == {"train_curated": 0, "train_noisy": 3}
    top = {t["n"]: t for t in out["top"]}
    assert (top[1]["precision"], top[1]["recall"]) == (1.0, round(1 / 3, 4))
    assert (top[2]["precision"], top[2]["recall"]) == (0.5, round(1 / 3, 4))
    assert (top[3]["precision"], top[3]["recall"]) == (round(2 / 3, 4), round(2 / 3, 4))
    assert top[10]["taken"] == 4 and top[10]["hits"] == 2 and top[10]["precision"] == 0.5
    assert top[3]["relabel_exact"] == "1/2"  # n1 -> a is right; n2 -> a misses b


def test_label_check_command(tmp_path, capsys):
    import json

    issues = tmp_path / "issues.csv"
    pd.DataFrame({"fname": ["n4.wav", "n1.wav"], "action": ["relabel", "drop"], "labels": ["d", ""],
                  "note": ["", ""], "split": ["noisy"] * 2, "given": ["d,e", "b"], "score": [0.1, 0.2]}
                 ).to_csv(issues, index=False)
    assert cli.main(["label-check", str(issues), str(provenance_file(tmp_path, PROV)), "--top", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top"] == [{"n": 2, "taken": 2, "hits": 2, "precision": 1.0, "recall": round(2 / 3, 4),
                           "relabel_exact": "1/1"}]


def test_label_check_scores_one_split_against_its_own_clips(tmp_path, capsys):
    """A curated clip ranked first (right labels, so a miss) counts against the combined ranking, not
    against --split noisy; --split curated has no corrupted clip to find, so no recall."""
    import json

    prov = provenance_file(tmp_path, PROV)
    issues = tmp_path / "issues.csv"
    pd.DataFrame({"fname": ["c1.wav", "n1.wav", "n3.wav"], "action": ["drop", "relabel", "drop"],
                  "labels": ["", "a", ""], "split": ["curated", "noisy", "noisy"]}).to_csv(issues, index=False)
    assert cli.main(["label-check", str(issues), str(prov), "--top", "2"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["top"][0]["hits"] == 1 and both["clips"] == 5
    assert cli.main(["label-check", str(issues), str(prov), "--top", "2", "--split", "noisy"]) == 0
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["clips"] == 4 and noisy["suggestions"] == 2 and noisy["per_split_corrupted"] == {"train_noisy": 3}
    assert noisy["top"] == [{"n": 2, "taken": 2, "hits": 1, "precision": 0.5, "recall": round(1 / 3, 4),
                             "relabel_exact": "1/1"}]
    assert cli.main(["label-check", str(issues), str(prov), "--split", "curated", "--top", "1"]) == 0
    cur = json.loads(capsys.readouterr().out)
    assert cur["corrupted_clips"] == 0 and cur["top"][0]["precision"] == 0.0 and cur["top"][0]["recall"] is None

    issues.write_text("fname,action,labels\nn1.wav,drop,\n")
    assert cli.main(["label-check", str(issues), str(prov), "--split", "noisy"]) == 2
    assert f"{issues}: no split column" in capsys.readouterr().err


def test_bad_input_names_the_file_and_the_rows(tmp_path, capsys):
    prov = provenance_file(tmp_path, PROV)
    issues = tmp_path / "issues.csv"
    issues.write_text("fname,action,labels,score\nn1.wav,drop,,0.1\nn1.wav,drop,,x\n")
    with pytest.raises(DataError) as e:
        li.read_issues(issues)
    msg = str(e.value)
    assert f"{issues}: column fname: 1 duplicate fnames: 1 row: 'n1.wav'" in msg
    assert f"{issues}: column score: not a number on line(s) [3]" in msg

    issues.write_text("fname,action,labels\nzz.wav,drop,\n")
    assert cli.main(["label-check", str(issues), str(prov)]) == 2
    assert f"{issues}: column fname: 1 suggested clips are not in the provenance: 1 row: 'zz.wav'" \
        in capsys.readouterr().err

    bad = tmp_path / "bad_prov.csv"
    bad.write_text("split,fname,true_labels\ntrain_noisy,n1.wav,a\n")
    with pytest.raises(DataError, match=r"bad_prov.csv: missing column\(s\) \['given_labels'\]"):
        li.read_provenance(bad)
    bad.write_text('split,fname,true_labels,given_labels\ntrain_noisy,n1.wav,,a\n')
    with pytest.raises(DataError, match=r"bad_prov.csv: column true_labels: empty on line\(s\) \[2\]"):
        li.read_provenance(bad)


def test_the_noisy_split_is_judged_by_the_mean_of_the_pseudo_stages_scores(tmp_path):
    """No model runs in the stage: the noisy clips' probabilities are pseudo@k's scores, averaged
    over the folds; scores for other clips (or in another order) are refused, naming the file."""
    from fat.io import save_predictions
    from fat.layout import Layout

    layout = Layout(tmp_path)
    layout.raw.mkdir(parents=True)
    fnames = ["n0.wav", "n1.wav", "n2.wav"]
    pd.DataFrame({"fname": fnames, "labels": ["a", "b", "c,d"]}).to_csv(layout.raw / "train_noisy.csv", index=False)
    pd.DataFrame(columns=["fname", *CLASSES]).to_csv(layout.raw / "sample_submission.csv", index=False)
    rng = np.random.default_rng(0)
    per_fold = [np.round(rng.uniform(size=(3, len(CLASSES))), 4) for _ in range(2)]
    for k, p in enumerate(per_fold):
        save_predictions(layout.pseudo_scores(k), fnames, p, CLASSES)
    got, probs = li.family_predictions(layout, [0, 1], CLASSES, "noisy")
    assert got == fnames
    np.testing.assert_allclose(probs, np.mean(per_fold, axis=0), atol=1e-9)
    save_predictions(layout.pseudo_scores(1), fnames[::-1], per_fold[1], CLASSES)
    with pytest.raises(ValueError, match=r"fold1/scores\.csv: its clips are not the 3 clips of train_noisy\.csv"):
        li.family_predictions(layout, [0, 1], CLASSES, "noisy")
