"""Capture from a running model through hooks: exact attention probabilities per layer
(:mod:`.attention`), block or stage outputs (:mod:`.outputs`), and the skip inputs and branch outputs
of residual sub-layers (:mod:`.residuals`). Hooks live only inside a context
manager; nothing is left on a model.
"""
