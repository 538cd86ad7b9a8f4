"""Fine-tuning an encoder's backbone with a head, from pixels: :func:`kenner.train.finetune.fit_finetune`
returns a :class:`kenner.train.finetuned.FinetunedModel`."""
