"""Model engines: local transformers InternVL (:mod:`.local`) and OpenAI-compatible remote (:mod:`.remote`).

Submodules are imported on demand so that a remote-only set-up never loads torch.
"""
