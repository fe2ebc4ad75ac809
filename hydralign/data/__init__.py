"""Data: readers (files, hub, synthetic task) -> chat templates -> tokenized examples -> micro-batches."""
