"""Model-side training: the shared loop (generator and VAEs), its config and the weight EMA.

Entry point: :func:`geo4d_policy.train.trainer.train`.
"""
