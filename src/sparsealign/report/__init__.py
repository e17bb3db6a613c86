"""Stage 6 -- report: scaling analysis, figures and report.md/html, fed only by results.parquet."""
