"""How layers' representations relate: CKA within and between models, and what a few-shot linear
probe reads from each layer.
"""
