"""Calibration: FFN activations recorded on text become thresholds per target, predictors and a hot/cold profile."""
