"""Stage 2 — align: DPO, ORPO, SimPO and their rationale variants (RDPO, RORPO, RSimPO) on any HF causal LM."""
