"""Training launch scripts and data tools (SFT, reasoning SFT, DPO, audio post-training)."""
