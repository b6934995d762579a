"""Capture from a running model through hooks: exact attention probabilities per layer
(:mod:`.attention`) and block or stage outputs (:mod:`.outputs`). Hooks live only inside a context
manager; nothing is left on a model.
"""
