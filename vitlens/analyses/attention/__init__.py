"""Analyses of attention maps: mean attention distance (global and windowed), rollout and its scores.
"""
