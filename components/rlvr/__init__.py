"""RLVR stage: GRPO on problems with verifiable answers, scored by rule-based verifiers."""
