"""The spine of kenner: dataset -> split -> cached embeddings, shared by every method.

``prepare_embeddings`` turns a run config into one embedding matrix with labels and a split column;
training, sweeps, retrieval and reports all start from it, so they all see the same split.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kenner.config.legacy import DataConfig, EncoderConfig, SplitConfig
from kenner.data.background import background_images, background_label, draw_background
from kenner.data.filters import apply_filters
from kenner.data.manifest import Dataset, Exclusion, Sample, load_dataset, write_exclusions
from kenner.data.splits import (
    Split,
    load_folds,
    load_split,
    make_folds,
    make_split,
    save_folds,
    save_split,
    split_of_samples,
)
from kenner.device import resolve_device
from kenner.encoders import create_encoder
from kenner.encoders.base import Encoder
from kenner.encoders.extract import extract_embeddings
from kenner.encoders.store import EmbeddingStore, default_cache_dir
from kenner.encoders.views import combine_views, resolve_mode
from kenner.errors import DataError, KennerError
from kenner.io import atomic_write_json

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class PreparedEmbeddings:
    """One row per sample: the combined-view embedding, its label index and its split."""

    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    class_names: list[str]
    sample_ids: list[str]
    groups: list[str]
    dataset: Dataset
    encoder_spec: str
    encoder_fingerprint: str
    views: str
    per_view: dict[str, np.ndarray] = field(default_factory=dict)
    exclusions: list[Exclusion] = field(default_factory=list)

    @property
    def dataset_name(self) -> str:
        source = self.dataset.source
        return (source.stem if source.is_file() else source.name) or "dataset"

    @property
    def encoder_name(self) -> str:
        return safe_name(self.encoder_spec)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == name
        return self.X[mask], self.y[mask]

    def with_split(self, split: Split) -> PreparedEmbeddings:
        """The same embeddings under another split (k-fold)."""
        return dataclasses.replace(self, split=np.asarray(split_of_samples(split, self.groups)))


def safe_name(text: str) -> str:
    """A run-name-friendly form of an encoder spec or dataset name."""
    keep = [c if c.isalnum() else "_" for c in text.rsplit("/", 1)[-1].lower()]
    return "".join(keep).strip("_") or "encoder"


def load_data(cfg: DataConfig, out_dir: Path | None = None) -> tuple[Dataset, list[Exclusion]]:
    """Load, validate and filter a dataset; exclusions are written to ``out_dir/excluded.csv``."""
    if not cfg.data:
        raise KennerError("no dataset given: pass --data FOLDER_OR_MANIFEST")
    dataset, exclusions = load_dataset(cfg.data, on_bad_image=cfg.on_bad_image)
    dataset, filtered = apply_filters(
        dataset, omit_classes=cfg.omit_classes, min_condition=cfg.min_condition,
        min_samples_per_class=cfg.min_samples_per_class, min_size=cfg.min_size,
    )
    exclusions = [*exclusions, *filtered]
    if not dataset.samples:
        raise KennerError(f"{cfg.data}: no samples left after validation and filters")
    if cfg.background_class and cfg.background_class not in dataset.classes:
        raise KennerError(
            f"--background-class {cfg.background_class!r} is not a class of {cfg.data}; "
            f"classes: {', '.join(dataset.classes[:20])}"
        )
    if out_dir is not None and exclusions:
        write_exclusions(exclusions, out_dir / "excluded.csv")
        log.info("%d image(s)/sample(s) left out; see %s", len(exclusions), out_dir / "excluded.csv")
    return dataset, exclusions


def check_views(dataset: Dataset, mode: str) -> None:
    """Fail before any embedding when ``--views`` names no view (or combination) of ``dataset``."""
    try:
        resolve_mode(dataset.views, mode)
    except KennerError as error:
        raise DataError(f"--views: {error}", path=str(dataset.source)) from None


def resolve_split(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> Split:
    """Reuse ``--splits DIR`` or ``out_dir/splits``; otherwise make the split and save it there."""
    target = out_dir / "splits"
    source = Path(cfg.splits) if cfg.splits else target
    if (source / "train_ids.json").exists():
        split = load_split(source)
        if source != target:
            save_split(split, target, groups=dataset.groups, labels=dataset.labels)
        log.info("reusing the split in %s", source)
        return split
    if cfg.splits:
        raise KennerError(f"--splits {cfg.splits}: no train_ids.json there; make one with 'kenner split'")
    split, warnings = make_split(dataset.groups, dataset.labels, ratios=cfg.split_ratios, seed=cfg.split_seed)
    for warning in warnings:
        log.warning("split: %s", warning)
    save_split(split, target, groups=dataset.groups, labels=dataset.labels)
    return split


def resolve_folds(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> list[Split]:
    """K group-aware folds, reused from ``--splits DIR`` / ``out_dir/splits`` when saved there."""
    target = out_dir / "splits"
    source = Path(cfg.splits) if cfg.splits else target
    if (source / "fold_0" / "train_ids.json").exists():
        folds = load_folds(source)
        if len(folds) != cfg.folds:
            raise KennerError(f"{source} holds {len(folds)} folds, but --folds {cfg.folds} was asked for")
        if source != target:
            save_folds(folds, target, groups=dataset.groups, labels=dataset.labels)
        return folds
    if cfg.splits:
        raise KennerError(f"--splits {cfg.splits}: no fold_0/train_ids.json there; "
                          f"make folds with 'kenner split --folds {cfg.folds}'")
    folds = make_folds(dataset.groups, dataset.labels, k=cfg.folds, seed=cfg.split_seed,
                       val_fraction=cfg.split_ratios[1])
    save_folds(folds, target, groups=dataset.groups, labels=dataset.labels)
    return folds


def build_encoder(cfg: EncoderConfig) -> Encoder:
    return create_encoder(cfg.encoder, weights=cfg.weights, pooling=cfg.pooling, device=str(resolve_device(cfg.device)),
                          backend=cfg.backend, cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None)


def embed_views(sample_paths: list[dict[str, Path]], views: list[str], encoder: Encoder, cfg: EncoderConfig,
                background: tuple[int, ...] = (255, 255, 255)) -> dict[str, np.ndarray]:
    """Embeddings of every view of every sample (cached: only new images are computed)."""
    store = EmbeddingStore(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(),
                           encoder.fingerprint, encoder.dim)
    paths = [sample[view] for view in views for sample in sample_paths]
    matrix = extract_embeddings(encoder, paths, store, batch_size=cfg.embed_batch_size,
                                num_workers=cfg.num_workers, background=tuple(background))
    n = len(sample_paths)
    return {view: matrix[i * n:(i + 1) * n] for i, view in enumerate(views)}


def prepare_embeddings(data: DataConfig, split_cfg: SplitConfig, enc_cfg: EncoderConfig, *,
                       out_dir: Path, split: Split | None = None,
                       encoder: Encoder | None = None) -> PreparedEmbeddings:
    """Dataset -> split -> cached embeddings -> one matrix with labels and a split column."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset, exclusions = load_data(data, out_dir)
    check_views(dataset, enc_cfg.views)
    if split is None:
        split = resolve_folds(dataset, split_cfg, out_dir)[0] if split_cfg.folds else resolve_split(
            dataset, split_cfg, out_dir)
    split_column = np.asarray(split_of_samples(split, dataset.groups))
    encoder = encoder or build_encoder(enc_cfg)
    per_view = embed_views([sample.paths for sample in dataset.samples], dataset.views, encoder, enc_cfg,
                           data.background_color)
    X = combine_views(per_view, enc_cfg.views).astype(np.float32, copy=False)
    class_to_idx = dataset.class_to_idx
    atomic_write_json(out_dir / "class_to_idx.json", class_to_idx)
    return PreparedEmbeddings(
        X=X, y=np.asarray([class_to_idx[label] for label in dataset.labels], dtype=np.int64),
        split=split_column, class_names=list(dataset.classes), sample_ids=list(dataset.ids),
        groups=list(dataset.groups), dataset=dataset, encoder_spec=enc_cfg.encoder,
        encoder_fingerprint=encoder.fingerprint, views=enc_cfg.views, per_view=per_view,
        exclusions=exclusions,
    )


def embed_background(data: DataConfig, views: list[str], encoder: Encoder, enc_cfg: EncoderConfig
                     ) -> tuple[list[Path], dict[str, np.ndarray]]:
    """The ``--background-dir`` images and their per-view embeddings (one image stands for every view)."""
    paths = background_images(data.background_dir)
    return paths, embed_views([dict.fromkeys(views, path) for path in paths], views, encoder, enc_cfg,
                              data.background_color)


def add_background_rows(prepared: PreparedEmbeddings, data: DataConfig, enc_cfg: EncoderConfig, *,
                        encoder: Encoder | None = None, seed: int = 0) -> PreparedEmbeddings:
    """``--bg N`` background images per foreground class appended to every split, as samples
    ``background/<file>#<n>`` of the background class (see :mod:`kenner.data.background`)."""
    views = prepared.dataset.views
    paths, per_view = embed_background(data, views, encoder or build_encoder(enc_cfg), enc_cfg)
    label, names = background_label(prepared.class_names, data.background_class)
    drawn = draw_background(prepared.split, prepared.y, label, len(paths), data.bg, seed)
    rows = np.concatenate(list(drawn.values()))
    split = np.concatenate([np.full(len(r), name) for name, r in drawn.items()])
    root = Path(data.background_dir)
    ids = [f"background/{paths[i].relative_to(root).as_posix()}#{n}" for n, i in enumerate(rows)]
    samples = [Sample(id=sample_id, label=names[label], group=sample_id, paths=dict.fromkeys(views, paths[i]))
               for sample_id, i in zip(ids, rows, strict=True)]
    X_bg = combine_views({view: matrix[rows] for view, matrix in per_view.items()}, enc_cfg.views)
    return dataclasses.replace(
        prepared, X=np.concatenate([prepared.X, X_bg.astype(np.float32, copy=False)]),
        y=np.concatenate([prepared.y, np.full(len(rows), label, dtype=prepared.y.dtype)]),
        split=np.concatenate([prepared.split, split]), class_names=names,
        sample_ids=[*prepared.sample_ids, *ids], groups=[*prepared.groups, *ids],
        dataset=Dataset([*prepared.dataset.samples, *samples], views, prepared.dataset.source,
                        prepared.dataset.image_sizes),
        per_view={view: np.concatenate([prepared.per_view[view], matrix[rows]]) for view, matrix in per_view.items()},
    )
