"""Judges: LLM-as-judge and Bradley-Terry reward-model win rates."""
