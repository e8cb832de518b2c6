"""Data side of training: turning stored samples into model inputs (questions, answers, token ids)."""
