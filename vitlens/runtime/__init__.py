"""The plumbing every layer uses and that knows nothing of models: errors, batches, sizes, precision,
train/eval modes, distributed runs, resumable state, files, display in notebooks, frozen results.
"""
