"""Looking at the data itself before training: near-duplicates and leakage across splits, likely label errors,
outliers and confusable classes, all from one exact kNN search over the cached embeddings."""
