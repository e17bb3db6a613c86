"""Statistics shared by every stage: confidence intervals, paired tests, multiple-comparison control, fits."""
