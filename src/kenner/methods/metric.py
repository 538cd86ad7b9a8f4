"""``metric``: a projection trained by metric learning, then a kNN vote over a Faiss gallery of its output.

The projection (:class:`kenner.heads.projection.ProjectionHead`) learns with ArcFace plus mined triplets over
P x K batches on the cached embeddings and stops early on validation Recall@1.
"""

from __future__ import annotations

from kenner.config.tree import RunConfig
from kenner.heads.projection import ProjectionHead, projection_params
from kenner.methods.base import FitContext, Method, TaskData
from kenner.methods.gallery import GalleryPredictor


class MetricMethod(Method):
    predictor = GalleryPredictor

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> GalleryPredictor:
        train, y_train = data.part("train")
        val, y_val = data.part("val")
        projection = ProjectionHead(**projection_params(cfg))
        projection.fit(
            train.features(), y_train, X_val=val.features() if len(val) else None, y_val=y_val if len(val) else None
        )
        return GalleryPredictor.build(data, cfg, projection)
