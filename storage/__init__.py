"""Files a run writes and reads: atomic writes, checkpoints (and their digests), the run folder's lock, where weights come from, and other projects' formats."""
