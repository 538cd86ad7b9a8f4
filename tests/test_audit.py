"""``kenner audit`` finds planted near-duplicates, label flips and outliers; ``--group-duplicates`` and
``--exclude`` act on them; ``kenner train`` warns about near-duplicates across its split.

The image tests run the default encoder (EfficientNet-Lite0, real weights, offline; the torch backend) on a small
folder of real images, Tux Paint stamps of three categories (animals, food, vehicles), each its own group, with
copies under new ids (byte-identical, resized + JPEG-recompressed, JPEG-recompressed), stamps filed under the
wrong class and a flat-colour and a noise image among them.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kenner.audit.confusable import confusable_pairs
from kenner.audit.label_issues import label_issues, out_of_fold_proba
from kenner.audit.near_duplicates import crossing, identical_pairs, near_duplicates, threshold_examples
from kenner.audit.neighbours import nearest
from kenner.audit.outliers import find_outliers
from kenner.cli import main
from kenner.config.tree import build_config
from kenner.data.exclude import read_id_list
from kenner.data.splits import Split, make_split, save_split, split_of_samples
from kenner.errors import KennerError
from kenner.methods.base import Samples
from kenner.runs.audit import audit_dataset, count_cross_split_duplicates
from kenner.runs.data import embedder_for, load_data
from synthetic import blobs, write_two_view_dataset

STAMPS = Path("/usr/share/tuxpaint/stamps")
CLASSES = ("animals", "food", "vehicles")
PER_CLASS = 16
COPIES = {
    "animals/animals0": "animals/copyexact",
    "food/food3": "food/copyjpeg",
    "vehicles/vehicles2": "vehicles/copyjpg2",
}
FLIPS = {
    "animals/animals7": "food",
    "vehicles/vehicles9": "animals",
    "food/food12": "vehicles",
    "animals/animals14": "vehicles",
}  # source id -> the class it is filed under
OUTLIERS = ("food/flat", "vehicles/noise")


def flatten(path: Path) -> Image.Image:
    """A stamp on white, as kenner sees it (transparent pixels over the default background)."""
    with Image.open(path) as image:
        image = image.convert("RGBA")
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        return flat


def write_stamps(root: Path) -> Path:
    """The planted dataset (see the module docstring); ids are ``<class>/<class><n>``, each its own group."""
    for label in CLASSES:
        for n, source in enumerate(sorted((STAMPS / label).rglob("*.png"))[:PER_CLASS]):
            target = root / label / f"{label}{n}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    shutil.copyfile(root / "animals/animals0.png", root / "animals/copyexact.png")
    image = flatten(root / "food/food3.png")
    image.resize((image.width * 3 // 2, image.height * 3 // 2), Image.Resampling.BICUBIC).save(
        root / "food/copyjpeg.jpg", quality=90
    )
    flatten(root / "vehicles/vehicles2.png").save(root / "vehicles/copyjpg2.jpg", quality=90)
    for source, target in FLIPS.items():
        shutil.move(root / f"{source}.png", root / target / f"{Path(source).name}.png")
    Image.new("RGB", (160, 160), (40, 160, 220)).save(root / "food/flat.png")
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "vehicles/noise.png")
    return root


def flipped_ids() -> set[str]:
    return {f"{target}/{Path(source).name}" for source, target in FLIPS.items()}


def config(data: Path, cache: Path, **data_fields) -> object:
    return build_config(
        [
            {
                "data": {"data": str(data), **data_fields},
                "encoder": {"backend": "torch", "cache_dir": str(cache)},
                "compute": {"num_workers": 0},
            }
        ]
    )


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not STAMPS.is_dir():
        pytest.skip("Debian's tuxpaint-stamps-default is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("audit")
    return write_stamps(root / "stamps"), root / "cache"


@pytest.fixture(scope="module")
def audited(shapes: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    data, cache = shapes
    return audit_dataset(config(data, cache), output=str(tmp_path_factory.mktemp("report") / "audit"))


def found_pairs(result) -> set[frozenset[str]]:
    ids = result.data.ids
    pairs = result.findings.near.as_tuples() + result.findings.identical.as_tuples()
    return {frozenset((ids[a], ids[b])) for a, b in pairs}


def test_planted_near_duplicates_are_found_with_precision_and_recall(audited) -> None:
    planted = {frozenset(pair) for pair in COPIES.items()}
    found = found_pairs(audited)
    recall = len(planted & found) / len(planted)
    precision = len(planted & found) / max(len(found), 1)
    assert recall == 1.0, found
    assert precision >= 0.5, found - planted
    ids = audited.data.ids
    identical = {frozenset((ids[a], ids[b])) for a, b in audited.findings.identical.as_tuples()}
    assert identical == {frozenset(("animals/animals0", "animals/copyexact"))}
    above, below = audited.findings.above, audited.findings.below
    assert above.similarity.min() >= audited.findings.threshold > below.similarity.max()


def test_planted_label_flips_and_outliers_on_real_images(audited) -> None:
    """Stamps are varied clip art, 16 per class: a weak signal, so only half the flips are asked for (the
    generated-embedding tests below and bench/bench_audit.py on Fashion-MNIST measure the rest)."""
    ids, names = audited.data.ids, audited.data.class_names
    issues = audited.findings.issues
    found = {ids[row]: names[s] for row, s in zip(issues.rows, issues.suggested, strict=True)}
    hits = flipped_ids() & set(found)
    assert len(hits) >= len(FLIPS) / 2, found
    assert len(hits) / len(found) >= 0.25, found
    truth = {f"{target}/{Path(source).name}": Path(source).parent.name for source, target in FLIPS.items()}
    assert all(found[sample_id] == truth[sample_id] for sample_id in hits)
    farthest = [ids[row] for row in np.argsort(-audited.findings.outliers.distance)]
    assert farthest[0] == "vehicles/noise" and "food/flat" in farthest[:5]


def test_report_puts_leakage_first_and_lists_every_finding(audited) -> None:
    report = (audited.out_dir / "audit.md").read_text(encoding="utf-8")
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0].startswith("## Leakage")
    assert [s.split(" (")[0] for s in sections[1:]] == [
        "## Near-duplicates",
        "## Byte-identical files",
        "## Likely label errors",
        "## Outliers",
        "## Confusable class pairs",
    ]
    rows = list(csv.DictReader((audited.out_dir / "audit.csv").open(encoding="utf-8")))
    leakage = [row for row in rows if row["finding"] == "leakage"]
    split = dict(zip(audited.data.ids, audited.data.split, strict=True))
    crossing_pairs = {frozenset(p) for p in COPIES.items() if split[p[0]] != split[p[1]]}
    assert {frozenset((row["id"], row["other_id"])) for row in leakage} >= crossing_pairs
    assert all(row["split"] != row["other_split"] for row in leakage)
    flagged = audited.findings.issues.rows
    assert [row["id"] for row in rows if row["finding"] == "label_issue"] == [audited.data.ids[r] for r in flagged]
    for name in ("leakage.png", "threshold.png", "label_issues.png", "outliers.png"):
        with Image.open(audited.out_dir / name) as sheet:
            assert sheet.width >= 2 * 112 and sheet.height > 112


def test_group_duplicates_keeps_planted_copies_in_one_split(shapes: tuple[Path, Path]) -> None:
    data, cache = shapes
    for grouped in (False, True):
        cfg = config(data, cache, group_duplicates=grouped, duplicates="ignore")
        dataset, _ = load_data(cfg.data, cache_dir=str(cache), embedder=embedder_for(cfg))
        group = dict(zip(dataset.ids, dataset.groups, strict=True))
        assert all((group[a] == group[b]) == grouped for a, b in COPIES.items())
        for seed in range(5):
            split, _ = make_split(dataset.groups, dataset.labels, seed=seed)
            where = dict(zip(dataset.ids, split_of_samples(split, dataset.groups), strict=True))
            if grouped:
                assert all(where[a] == where[b] for a, b in COPIES.items())


def test_exclude_leaves_out_the_listed_ids_and_records_them(shapes: tuple[Path, Path], tmp_path: Path) -> None:
    data, cache = shapes
    listed = tmp_path / "keep.csv"
    listed.write_text("finding,id,label\noutlier,food/flat,food\noutlier,vehicles/noise,vehicles\n")
    dataset, exclusions = load_data(config(data, cache, exclude=str(listed)).data, tmp_path, cache_dir=str(cache))
    assert not set(OUTLIERS) & set(dataset.ids)
    assert {e.sample_id for e in exclusions} == set(OUTLIERS)
    recorded = list(csv.DictReader((tmp_path / "excluded.csv").open(encoding="utf-8")))
    assert {row["sample_id"] for row in recorded} == set(OUTLIERS)
    assert all("--exclude" in row["reason"] for row in recorded)


def test_id_lists_read_text_and_csv(tmp_path: Path) -> None:
    text = tmp_path / "ids.txt"
    text.write_text("# left out after the audit\na/1\n\nb/2  # blurry\na/1\n")
    assert read_id_list(text) == ["a/1", "b/2"]
    table = tmp_path / "audit.csv"
    table.write_text("finding,rank,id\nconfusable_classes,1,\nleakage,1,c/3\n")
    assert read_id_list(table) == ["c/3"]
    (tmp_path / "bad.csv").write_text("name,label\nx,y\n")
    with pytest.raises(KennerError, match="no 'id' column"):
        read_id_list(tmp_path / "bad.csv")


def test_train_warns_with_the_count_of_cross_split_near_duplicates(
    shapes: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, cache = shapes
    cfg = config(data, cache, duplicates="ignore")
    dataset, _ = load_data(cfg.data, cache_dir=str(cache))
    # a split that puts every planted copy apart from its original
    group = dict(zip(dataset.ids, dataset.groups, strict=True))
    copies = [group[copy] for copy in COPIES.values()]
    train = [g for g in dataset.groups if g not in copies]
    splits = tmp_path / "splits"
    split = Split(train=sorted(train[:-6]), val=sorted(train[-6:]), test=sorted(copies))
    save_split(split, splits, groups=dataset.groups, labels=dataset.labels)
    samples = Samples(dataset.ids, [s.paths for s in dataset.samples], embedder=embedder_for(cfg), views="concat")
    column = np.asarray(split_of_samples(split, dataset.groups))
    count, threshold = count_cross_split_duplicates(samples, column, None)
    assert count >= len(COPIES)
    caplog.set_level(logging.WARNING)
    argv = [
        "train",
        "--data",
        str(data),
        "--method",
        "knn",
        "--splits",
        str(splits),
        "--out-dir",
        str(tmp_path / "run"),
    ]
    argv += [
        "--backend",
        "torch",
        "--cache-dir",
        str(cache),
        "--num-workers",
        "0",
        "--no-track",
        "--duplicates",
        "ignore",
    ]
    assert main(argv) == 0
    warnings = [r.getMessage() for r in caplog.records if "cross this split" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"{count} near-duplicate pair(s) (embedding cosine >= {threshold:.3f})"
    )


def test_cli_errors_are_one_line(shapes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, _ = shapes
    cases = [
        (["audit", "--data", str(tmp_path / "nowhere")], "nowhere"),
        (["audit", "--data", str(data), "--splits", str(tmp_path)], "no train_ids.json"),
        (["audit", "--data", str(data), "--out-dir", str(tmp_path)], "no run split"),
        (["audit", "--data", str(data), "--exclude", str(tmp_path / "gone.txt")], "file not found"),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kenner: error:") and words in err[0], err


# ------------------------------------------------------------------------------ on random embeddings


def test_near_duplicates_identical_files_and_the_threshold_examples() -> None:
    x, _ = blobs([30, 30], dim=16, sep=1.0)
    x = np.concatenate([x, x[:3] + 1e-4, x[5:6]])  # rows 60-62 copy rows 0-2, row 63 copies row 5 exactly
    neighbours = nearest(x, 5)
    pairs = near_duplicates(neighbours, 0.999)
    assert {tuple(p) for p in pairs.as_tuples()} == {(0, 60), (1, 61), (2, 62), (5, 63)}
    above, below = threshold_examples(neighbours, 0.999, 2)
    assert len(above) == 2 and above.similarity.min() >= 0.999 and below.similarity.max() < 0.999
    identical = identical_pairs([["a"], ["b"], ["a", "c"], ["c"]])
    assert identical.as_tuples() == [(0, 2), (2, 3)]
    assert crossing(identical, np.asarray(["train", "test", "train", "val"])).tolist() == [False, True]


def test_label_flips_are_found_from_out_of_fold_probabilities() -> None:
    x, y = blobs([60, 60, 60], dim=16, sep=3.0)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), size=9, replace=False)
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, 3, 9)) % 3
    groups = [f"g{i // 2}" for i in range(len(y))]  # two photos per object
    issues = label_issues(given, out_of_fold_proba(x, given, groups))
    hits = set(flipped.tolist()) & set(issues.rows.tolist())
    assert len(hits) / len(flipped) >= 0.6 and len(hits) / len(issues.rows) >= 0.8  # cleanlab errs on the safe side
    suggested = dict(zip(issues.rows.tolist(), issues.suggested.tolist(), strict=True))
    assert all(suggested[row] == y[row] for row in hits)


def test_outliers_and_confusable_classes_on_blobs() -> None:
    x, y = blobs([40, 40, 40], dim=16, sep=8.0)  # three tight cones of directions
    far = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32) * 8  # four random directions
    x = np.concatenate([x, far])
    y = np.concatenate([y, [0, 1, 2, 2]])
    outliers = find_outliers(x, y, nearest(x, 10))
    assert set(outliers.rows.tolist()) >= {120, 121, 122, 123}
    assert len(outliers.rows) <= 8
    x, y = blobs([30, 30, 30], dim=8, sep=3.0, seed=4)
    x[y == 2] = x[y == 1] + np.random.default_rng(0).normal(scale=0.3, size=(30, 8))  # classes 1 and 2 overlap
    pairs = confusable_pairs(nearest(x, 5), y, 3)
    assert (pairs[0].first, pairs[0].second) == (1, 2) and pairs[0].score > 0.2


def test_cli_audits_a_two_view_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_two_view_dataset(tmp_path / "coins", groups_per_class=3)
    out = tmp_path / "report"
    argv = ["audit", "--data", str(manifest), "--output", str(out), "--backend", "torch", "--num-workers", "0"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--top", "3", "--audit-folds", "3", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "likely label error(s)" in printed and str(out / "audit.md") in printed
    report = (out / "audit.md").read_text(encoding="utf-8")
    assert "obverse, reverse" in report
    rows = list(csv.DictReader((out / "audit.csv").open(encoding="utf-8")))
    assert {row["finding"] for row in rows} >= {"confusable_classes"}
    assert all(row["id"] in {"", *(f"{g}_{p}" for g in _coin_groups() for p in (0, 1))} for row in rows)


def _coin_groups() -> list[str]:
    return [f"{label[:3]}{g:02d}" for label in ("aureus", "denarius", "sestertius") for g in range(3)]
