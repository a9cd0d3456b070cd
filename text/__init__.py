"""Text and tokens: tokenizers, reading corpora, prepared datasets and the batches drawn from them, and text tasks that judge a model."""
