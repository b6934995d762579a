"""The analyses, grouped by what they look at: :mod:`.attention` (distance, windowed distance, rollout
and its scores), :mod:`.embeddings` (position similarity and structure, filters), :mod:`.fields`
(effective and theoretical receptive fields), :mod:`.representations` (CKA), :mod:`.cost` and the
ViT-vs-CNN :mod:`.locality`. Each is a pure function over a model and images (through the family
adapter and the capture layer) that returns a frozen result with ``.to_frame()`` and ``.plot()``.
"""
