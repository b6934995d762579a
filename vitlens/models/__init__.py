"""What reads models: loading (names, tags, checkpoints, the shipped zoo), one family adapter per
library (:mod:`.families`), and the token and window layouts every analysis reads positions from.

Nothing here captures activations or computes an analysis; everything above asks these modules.
"""
