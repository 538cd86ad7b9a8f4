"""The one training loop on embeddings and its parts: early stopping, the history schema, learning-rate
schedules, minibatch orders. Every kenner loop (heads, batched heads, metric learning, fine-tuning) uses them."""
