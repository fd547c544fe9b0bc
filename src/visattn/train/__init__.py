"""Training loops that visattn's models and the arena share: distillation (softmax to linear, dense to sparse),
surrogate fitting (Raptor) and the arena's trainer (DDP under ``torchrun``).

One module per concept; import the module you need (``from visattn.train import sparsify``). This package imports
nothing heavy itself, so ``import visattn`` stays fast.
"""
