"""What every training stage shares: the learner (accelerate, DeepSpeed ZeRO, Muon), data and collation, losses,
the one held-out evaluation path, and the two stage kinds of this layer (bootstrap, eval)."""
