"""sparsealign: preference alignment under activation-sparse inference, across model sizes.

Stages (each a subpackage, each reading and writing files in a run directory):
data -> align -> sparse -> evaluate -> study.  Importing this package is cheap: no torch.
"""

__version__ = "0.1.0"
