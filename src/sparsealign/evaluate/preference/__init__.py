"""Preference evaluation: implicit rewards on held-out pairs, accuracy, margins, divergences, flips."""
