"""Judging a model: scoring it on multiple-choice tasks (batched, split over the ranks), the accuracies and their standard errors, and the names they are reported under."""
