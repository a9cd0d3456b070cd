"""Text and tokens: tokenizers, reading corpora, prepared datasets and the batches drawn from them, and multiple-choice task files as token rows."""
