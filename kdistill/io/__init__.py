"""Persistence: distilled-set artifacts, checkpoints, run directories and the safe
npz/JSON reader and writer they share (files are data, never code)."""
