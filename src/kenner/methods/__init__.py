"""The methods kenner classifies with, registered by name (light: nothing heavy is imported here).

A new method is one file with a :class:`kenner.methods.base.Method` and one registration below.
"""

from kenner.methods.registry import METHODS, MethodSpec, register_method

HEAD = ("optim", "schedule", "early_stopping", "loss", "head")
FINETUNE_SECTIONS = ("optim", "schedule", "early_stopping", "arcface", "loss", "sampler", "head", "augment", "finetune")
FINETUNE_DEFAULTS = {
    "epochs": 15,
    "batch_size": 16,
    "lr": 5e-4,
    "weight_decay": 0.05,
    "scheduler": "cosine",
    "warmup_epochs": 1,
    "min_lr": 1e-6,
    "patience": 5,
}

register_method(
    MethodSpec(
        "linear",
        "a linear head on the cached embeddings (--init zeroshot: start from CLIP/SigLIP zero-shot weights)",
        (*HEAD, "zeroshot"),
        "kenner.methods.head:HeadMethod",
        fixed={"head_type": "linear"},
    )
)
register_method(
    MethodSpec(
        "mlp",
        "an MLP head (hidden layers) on the cached embeddings",
        HEAD,
        "kenner.methods.head:HeadMethod",
        fixed={"head_type": "mlp"},
    )
)
register_method(
    MethodSpec(
        "arcface",
        "a cosine-margin (ArcFace) head on an MLP body, on the cached embeddings",
        (*HEAD, "arcface"),
        "kenner.methods.head:HeadMethod",
        fixed={"head_type": "arcface"},
    )
)
register_method(
    MethodSpec(
        "knn",
        "a kNN vote over a Faiss gallery of the raw embeddings",
        ("retrieval",),
        "kenner.methods.knn:KnnMethod",
    )
)
register_method(
    MethodSpec(
        "blend",
        "a head's probabilities blended with a kNN vote (alpha * head + (1 - alpha) * kNN), alpha chosen on val",
        (*HEAD, "retrieval"),
        "kenner.methods.blend:BlendMethod",
    )
)
register_method(
    MethodSpec(
        "metric",
        "a projection trained by metric learning (ArcFace + mined triplets, P x K batches), then a kNN "
        "vote over its Faiss gallery",
        ("optim", "schedule", "early_stopping", "arcface", "sampler", "metric", "retrieval"),
        "kenner.methods.metric:MetricMethod",
        defaults={"epochs": 50, "margin_warmup_epochs": 2},
        fixed={"sampler": "pk"},
    )
)
register_method(
    MethodSpec(
        "side",
        "coin side classifier: which order two views are in (pair) or which side one photo shows (single)",
        (*HEAD, "side"),
        "kenner.methods.side:SideMethod",
    )
)
register_method(
    MethodSpec(
        "finetune",
        "fine-tune the encoder's backbone with a head, on the images (checkpoints, auto-resume)",
        (
            "optim",
            "schedule",
            "early_stopping",
            "arcface",
            "loss",
            "sampler",
            "head",
            "augment",
            "finetune",
            "zeroshot",
        ),
        "kenner.methods.finetune:FinetuneMethod",
        defaults=FINETUNE_DEFAULTS,
        uses_embeddings=False,
    )
)

register_method(
    MethodSpec(
        "zeroshot",
        "CLIP/SigLIP zero-shot: the class whose prompts' text embedding is closest (nothing trained)",
        ("zeroshot",),
        "kenner.methods.zeroshot:ZeroShotMethod",
    )
)

__all__ = ["METHODS", "MethodSpec", "register_method"]
