"""How layers' representations relate: CKA within and between models.
"""
