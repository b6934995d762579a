"""Receptive fields: the effective (input-gradient) field, the theoretical field and their geometry.
"""
