"""The sections of the config tree: one frozen dataclass per concern, shared by every method.

Every field name is unique across all sections, so a field has one ``--flag`` with one meaning in every
subcommand (``--lr`` is the learning rate of a head, a projection and a fine-tuned backbone alike), and
``--set lr=0.01`` or ``--set optim.lr=0.01`` both find it. Sections hold no logic: values are coerced and
checked by :mod:`kenner.config.tree` (the bounds and choices are in each field's metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

from kenner.config.fields import knob

VIEW_HELP = "a view name, avg or concat (coin aliases: obv, rev, both_avg, both_concat)"


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and which of them to use."""

    data: str = knob("", "image folder (root/<class>/<ID>_<seq>.jpg) or TSV/CSV manifest", metavar="PATH")
    on_bad_image: str = knob(
        "fail",
        "fail: stop with every bad image listed; skip: leave their samples out, listed in excluded.csv",
        ("fail", "skip"),
    )
    group_by: str = knob(
        "prefix",
        "folder datasets: a group (one object) is the file name's part before the last "
        "'_' with prefix, each file with file",
        ("prefix", "file"),
    )
    group_regex: str | None = knob(
        None,
        "folder datasets: the group is this regex's first group (or match) in the file name without extension",
        metavar="REGEX",
    )
    duplicates: str = knob(
        "merge",
        "byte-identical images under different ids or groups: put them in one group "
        "(merge, listed in duplicates.csv), stop naming them (refuse), or ignore",
        ("merge", "refuse", "ignore"),
    )
    group_duplicates: bool = knob(
        False,
        "merge the groups of near-duplicate images (embedding cosine >= --near-duplicate-threshold, same label) "
        "before splitting, so look-alike copies under other ids never cross splits",
    )
    near_duplicate_threshold: float | None = knob(
        None,
        "embedding cosine similarity from which two images count as near-duplicates",
        gt=0,
        le=1,
        shown="auto: 1 - 0.4 x the dataset's median nearest-neighbour cosine distance",
    )
    exclude: str | None = knob(
        None,
        "leave out the samples listed in FILE (one id a line, or a CSV with an id column such as kenner audit's "
        "audit.csv); recorded in excluded.csv",
        metavar="FILE",
    )
    omit_classes: tuple[str, ...] = knob((), "classes to leave out, comma-separated", metavar="A,B")
    min_condition: float | None = knob(
        None, "keep samples whose mean condition rating is >= X (unrated ones are kept)", ge=0
    )
    min_samples_per_class: int = knob(0, "drop classes with fewer samples", ge=0)
    min_size: int | None = knob(None, "drop a whole group if any image's short side is below PX", ge=1, metavar="PX")
    background_color: tuple[int, ...] = knob((255, 255, 255), "R,G,B behind transparent images", metavar="R,G,B")
    background_class: str | None = knob(
        None, "class meaning 'none of these'; adds foreground-only metrics", metavar="NAME"
    )
    background_dir: str | None = knob(None, "folder of images of none of the classes (with --bg N)", metavar="DIR")
    bg: int = knob(
        0,
        "background images per foreground class from --background-dir, in every split; they "
        "join --background-class, else a new class 'background'",
        ge=0,
        metavar="N",
    )


@dataclass(frozen=True)
class SplitConfig:
    """Group-aware stratified split: ratios and seed, K folds, or an existing split folder."""

    splits: str | None = knob(None, "reuse the split (or folds) saved in this folder", metavar="DIR")
    split_ratios: tuple[float, ...] = knob((0.7, 0.15, 0.15), "train,val,test shares", metavar="T,V,T")
    split_seed: int = knob(42, "seed of the split")
    folds: int = knob(0, "K group-aware stratified folds, one run per fold (0 = one split)", ge=0, metavar="K")


@dataclass(frozen=True)
class EncoderConfig:
    """Which frozen encoder embeds the images, how views combine, and where embeddings are cached."""

    encoder: str = knob(
        "default",
        "default | efficientnet_lite1 | efficientnet_lite2 | timm:NAME | hf:REPO_OR_DIR | open_clip:ARCH[@TAG] | "
        "local:DIR; several, comma-separated, make an ensemble (see --fusion)",
        metavar="SPEC",
    )
    weights: str | None = knob(None, "local weights file for timm encoders", metavar="FILE")
    pooling: str = knob("cls", "ViT pooling of hf encoders", ("cls", "mean", "cls+mean"))
    views: str = knob("concat", VIEW_HELP, metavar="MODE")
    cache_dir: str | None = knob(
        None,
        "embedding cache folder",
        metavar="DIR",
        shown="$KENNER_CACHE/embeddings, KENNER_CACHE defaulting to ~/.cache/kenner",
    )
    embed_batch_size: int = knob(64, "images per encoder forward pass", ge=1)
    fusion: str = knob(
        "concat",
        "how an encoder ensemble combines: concat (L2-normalised embeddings side by side), late (one model per "
        "encoder, probabilities averaged) or learned (late, with per-encoder weights fitted on val)",
        ("concat", "late", "learned"),
    )
    backend: str = knob(
        "auto",
        "encoder runtime (auto: ONNX Runtime for the packaged EfficientNet-Lite encoders on CPU)",
        ("auto", "torch", "onnx"),
    )

    @property
    def ensemble(self) -> bool:
        """Whether ``encoder`` names several encoders (an ensemble, combined as ``fusion`` says)."""
        return "," in self.encoder


@dataclass(frozen=True)
class ComputeConfig:
    """Hardware: device, precision, workers, Ray."""

    device: str = knob("auto", "auto (cuda if available) | cpu | cuda | cuda:N", metavar="DEVICE")
    num_workers: int = knob(2, "background image decoding workers", ge=0)
    precision: str = knob(
        "auto",
        "autocast precision of fine-tuning (auto: bf16 on compute capability >= 8, fp16 before, fp32 on CPU)",
        ("auto", "bf16", "fp16", "fp32"),
    )
    accum_steps: int | None = knob(
        None, "fine-tuning micro-batches per optimizer step", ge=1, shown="from the GPU's memory"
    )
    deterministic: bool = knob(False, "deterministic algorithms (reproducible, slower)")
    nproc: int = knob(
        1, "fine-tuning processes on this machine, data-parallel (DDP: gloo on CPU, NCCL with one GPU each)", ge=1
    )
    ray: str | None = knob(
        None,
        "compute missing embeddings (and sweep groups) on a Ray cluster: its address (auto, ray://host:10001), "
        "or no value for a local Ray instance",
        metavar="ADDRESS",
        const="local",
        shown="off: this process",
    )
    ray_workers: int | None = knob(
        None, "encoder actors of a --ray extraction", ge=1, shown="one per GPU, else the CPUs less one for reading"
    )


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser of every trained method."""

    epochs: int = knob(100, "maximum training epochs", ge=1)
    batch_size: int = knob(256, "samples per optimizer step", ge=1)
    lr: float = knob(1e-3, "learning rate", gt=0)
    weight_decay: float = knob(1e-4, "decoupled weight decay (AdamW) or L2 (adam, sgd)", ge=0)
    optimizer: str = knob("adamw", "optimizer", ("adamw", "adam", "sgd"))
    seed: int = knob(0, "seed of initialisation, batch order, augmentation and dropout")


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule, stepped once per epoch."""

    scheduler: str = knob("constant", "learning-rate schedule", ("constant", "cosine", "restarts", "plateau"))
    warmup_epochs: int = knob(0, "linear learning-rate warm-up epochs (constant and cosine schedules)", ge=0)
    min_lr: float = knob(0.0, "floor of the cosine schedules", ge=0)
    t0: int = knob(5, "restarts: epochs of the first cosine cycle (T_0)", ge=1)
    t_mult: int = knob(1, "restarts: cycle length factor (T_mult)", ge=1)
    plateau_factor: float = knob(0.5, "plateau: learning-rate factor when the monitored metric stalls", gt=0, lt=1)
    plateau_patience: int = knob(2, "plateau: stalled epochs tolerated before the rate is cut", ge=0)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Which validation metric picks the best epoch, and when training stops."""

    patience: int = knob(
        10,
        "stop after N epochs without a better validation metric and keep the best "
        "epoch (0 = train every epoch, keep the last)",
        ge=0,
    )
    monitor: str = knob(
        "auto",
        "validation metric of the best epoch (auto: recall_at_1 for metric "
        "learning and ArcFace fine-tuning, else macro_f1)",
        ("auto", "macro_f1", "accuracy", "loss", "recall_at_1", "auroc"),
    )
    min_epochs: int = knob(0, "never stop before this many epochs", ge=0)


@dataclass(frozen=True)
class ArcFaceConfig:
    """The additive angular margin (ArcFace) of arcface heads, metric learning and fine-tuning."""

    arcface_scale: float = knob(64.0, "logit scale s (64 suits hundreds of classes; 16-30 for fewer)", gt=0)
    arcface_margin: float = knob(0.5, "additive angular margin m in radians (0.2-0.3 for fewer than ~50 classes)", ge=0)
    margin_warmup_epochs: int = knob(0, "epochs with margin 0 before the margin applies", ge=0)
    margin_ramp_epochs: int = knob(0, "after the warm-up, raise the margin linearly to m over N epochs", ge=0)


@dataclass(frozen=True)
class LossConfig:
    """Cross-entropy knobs shared by heads and fine-tuning."""

    loss: str = knob(
        "ce",
        "fine-tuning objective: ce (cross-entropy through the head) or supcon (supervised contrastive loss on a "
        "projection of the features, --supcon-temperature/--supcon-dim, then a linear probe on the new embeddings)",
        ("ce", "supcon"),
    )
    label_smoothing: float = knob(0.0, "label smoothing of the cross-entropy", ge=0, lt=1)
    class_weight: str = knob("none", "per-class loss weights", ("none", "inverse", "effective"))
    effective_beta: float = knob(0.9999, "beta of effective-number class weights (Cui et al. 2019)", ge=0, lt=1)
    mixup: float = knob(
        0.0, "mixup alpha, soft labels (0 = off): on embeddings for heads, on images for fine-tuning", ge=0
    )


@dataclass(frozen=True)
class SamplerConfig:
    """Training batch composition of metric learning and fine-tuning."""

    sampler: str = knob(
        "random",
        "batch order: shuffled, inverse-frequency weighted, or P classes x K samples",
        ("random", "weighted", "pk"),
    )
    pk_p: int = knob(16, "P x K batches: classes per batch (metric learning)", ge=1)
    pk_k: int = knob(4, "P x K batches: samples per class", ge=2)


@dataclass(frozen=True)
class HeadConfig:
    """A head on embeddings (or on a fine-tuned backbone): architecture and long-tail knobs."""

    head_type: str = knob("linear", "head on the features", ("linear", "mlp", "arcface"))
    hidden_sizes: tuple[int, ...] = knob(
        (512,), "hidden layer sizes of mlp/arcface heads (for arcface the last one is the embedding)", metavar="N,N"
    )
    gelu_ln: bool = knob(False, "hidden blocks use LayerNorm + GELU instead of ReLU")
    dropout: float = knob(0.0, "dropout after each hidden block (linear head: on its input)", ge=0, lt=1)
    standardize: str = knob(
        "standardize", "feature normalisation fitted on the training rows only", ("none", "center", "standardize")
    )
    logit_adjust: str = knob(
        "none", "logit adjustment by the train class prior (Menon et al. 2021)", ("none", "train", "infer", "both")
    )
    logit_tau: float = knob(1.0, "strength tau of the logit adjustment", ge=0)
    balanced_softmax: bool = knob(False, "balanced softmax loss (Ren et al. 2020)")
    hardmine_epochs: int = knob(
        0, "in the last N epochs, resample training rows with probability rising with their loss (0 = off)", ge=0
    )
    crt_epochs: int = knob(
        0, "classifier re-training: freeze the body, re-train the last layer class-balanced for N epochs", ge=0
    )
    calibrate: bool = knob(
        True, "fit a softmax temperature on the validation split, when there is one (argmax unchanged)"
    )
    manifold_mixup: float = knob(0.0, "manifold mixup alpha at the first hidden layer (0 = off)", ge=0)
    feature_noise: float = knob(0.0, "std of Gaussian noise added to embeddings (0 = off)", ge=0)
    feature_scale: float = knob(0.0, "std of channel-wise multiplicative scaling of embeddings (0 = off)", ge=0)
    feature_aug_p: float = knob(0.5, "probability per sample of each feature augmentation", ge=0, le=1)
    supcon_weight: float = knob(0.0, "weight of a supervised contrastive loss on a projection (0 = off)", ge=0)
    supcon_temperature: float = knob(0.1, "temperature of the supervised contrastive loss", gt=0)
    supcon_dim: int = knob(128, "output size of the supervised contrastive projection", ge=1)
    center_loss_weight: float = knob(0.0, "weight of the center loss on the penultimate features (0 = off)", ge=0)


@dataclass(frozen=True)
class RetrievalConfig:
    """Faiss gallery, kNN vote and retrieval evaluation (knn and metric methods)."""

    gallery: str = knob("train", "gallery rows", ("train", "train+val"))
    index_factory: str = knob(
        "auto",
        "Faiss index_factory string (Flat = exact; IVF256,Flat; HNSW32; ...); auto: exact up to 100,000 gallery "
        "vectors, IVF<sqrt(N)>,Flat with nprobe=nlist/8 above",
        metavar="SPEC",
    )
    search_params: str = knob("", "Faiss search parameters, e.g. nprobe=16 or efSearch=128", metavar="K=V")
    vote: str = knob("temperature", "kNN vote", ("majority", "inverse_distance", "temperature"))
    knn_k: int = knob(20, "neighbours that vote", ge=1)
    knn_temperature: float = knob(0.07, "temperature of the temperature-weighted vote (DINO)", gt=0)
    eval_method: str = knob(
        "knn", "extra evaluation: knn_metrics.json, or that plus HDBSCAN clusters", ("none", "knn", "hdbscan")
    )
    hdbscan_min_cluster_size: int = knob(5, "HDBSCAN min_cluster_size", ge=2)


@dataclass(frozen=True)
class MetricConfig:
    """The projection that metric learning trains (ArcFace + mined triplets over P x K batches)."""

    proj_type: str = knob("mlp", "projection on the embeddings", ("linear", "mlp"))
    embedding_dim: int = knob(128, "output size of the projection (L2-normalised)", ge=1)
    proj_hidden_dim: int = knob(512, "hidden size of the mlp projection", ge=1)
    triplet_weight: float = knob(1.0, "weight of the mined triplet loss added to ArcFace (0 = off)", ge=0)
    triplet_margin: float = knob(0.1, "margin of the triplet loss and its semi-hard miner", ge=0)


@dataclass(frozen=True)
class SideConfig:
    """The coin side classifier."""

    side_task: str = knob(
        "pair", "pair: which order are two photos in? single: which side is one photo?", ("pair", "single")
    )
    disable_mask_pooling: bool = knob(False, "use pooled embeddings, not mask-pooled patch tokens of ViTs")


@dataclass(frozen=True)
class AugmentConfig:
    """Image size and augmentation of fine-tuning (training images only)."""

    img_size: int | None = knob(None, "input size in pixels", ge=16, metavar="PX", shown="the encoder's")
    aug_preset: str = knob("light", "training augmentation", ("none", "light", "strong"))
    aug_backend: str = knob("torchvision", "augmentation library", ("torchvision", "albumentations", "alb"))


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning the encoder's backbone: phases, EMA, checkpoints."""

    freeze_epochs: int = knob(0, "train only the head on a frozen backbone for N epochs first", ge=0)
    backbone_lr: float | None = knob(None, "learning rate of the backbone once unfrozen", gt=0, shown="--lr")
    ema_decay: float = knob(0.0, "EMA of the weights, evaluated beside the model each epoch (0 = off)", ge=0, lt=1)
    checkpoint_every: int = knob(0, "also keep checkpoint_epoch_N.pt every N epochs (0 = off)", ge=0)
    wise_ft: bool = knob(
        False, "WiSE-FT: interpolate the starting and the fine-tuned weights, alpha in 0, 0.1, ..., 1 chosen on val"
    )


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot prompts: what the classes are called and the sentences they are put in."""

    class_names: str | None = knob(
        None, "label -> display name in the prompts (JSON object or CSV/TSV label,name)", metavar="FILE"
    )
    templates: str = knob(
        "simple",
        "prompt templates: photo (1), simple (7), imagenet80 (CLIP's 80), or a CLIP_benchmark JSON file (a list "
        "of strings with {c}, or an object of prompts per class)",
        metavar="SET|FILE",
    )
    init: str = knob(
        "random",
        "the head's starting weights: random, zeroshot (the CLIP/SigLIP zero-shot classifier; linear heads) or "
        "probe (finetune: a linear probe fitted on the cached embeddings first, LP-FT)",
        ("random", "zeroshot", "probe"),
    )


@dataclass(frozen=True)
class DecisionConfig:
    """How scores become answers: the binary threshold and the reject option ("unclassifiable")."""

    pos_class: str | None = knob(
        None, "binary task: the positive class (AUROC, best-F1 threshold chosen on val)", metavar="NAME"
    )
    target_precision: float | None = knob(None, "reject option: tune on val for this precision (e.g. 0.95)", gt=0, le=1)
    target_coverage: float | None = knob(None, "reject option: tune on val for this coverage (e.g. 0.8)", gt=0, le=1)
    reject_by: str = knob(
        "distance",
        "reject signal: distance (top-1 cosine distance, or 1 - max probability), "
        "margin (top-1 minus top-2 score) or both limits together",
        ("distance", "margin", "both"),
    )


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking."""

    track: str = knob("mlflow", "tracker (MLflow in ./mlflow.db by default)", ("mlflow", "wandb", "none"))
    experiment: str = knob("kenner", "MLflow experiment / W&B project")
    tracking_uri: str | None = knob(
        None,
        "MLflow tracking URI",
        metavar="URI",
        shown="$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder",
    )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "split": SplitConfig,
    "encoder": EncoderConfig,
    "compute": ComputeConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "early_stopping": EarlyStoppingConfig,
    "arcface": ArcFaceConfig,
    "loss": LossConfig,
    "sampler": SamplerConfig,
    "head": HeadConfig,
    "retrieval": RetrievalConfig,
    "metric": MetricConfig,
    "side": SideConfig,
    "augment": AugmentConfig,
    "finetune": FinetuneConfig,
    "zeroshot": ZeroShotConfig,
    "decision": DecisionConfig,
    "tracking": TrackingConfig,
}

# Sections every method reads.
COMMON_SECTIONS = ("data", "split", "encoder", "compute", "decision", "tracking")
