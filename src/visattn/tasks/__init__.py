"""The data generators, losses and metrics of visattn's task models (deblurring, face parsing, image compression,
PDE forecasting, few-shot detection, the arena's procedural tasks). The networks themselves live in
:mod:`visattn.models`.

One module per task; import the module you need. This package imports nothing heavy itself.
"""
