"""Ecosystem adapters: CTF and one-shot pruning as training-framework callbacks.

* :mod:`prunekit.integrations.lightning` – PyTorch Lightning ``Callback``\\ s
  (``pip install 'prunekit[lightning]'``).
* :mod:`prunekit.integrations.huggingface` – Hugging Face ``TrainerCallback``\\ s and a
  ``Trainer`` whose loss takes CTF's penalty (``pip install 'prunekit[hf]'``).

Both offer ``CTFCallback`` (learned masks, finalized to an exact rate, ``.plan``,
``.pruned_model()``) and ``PruneCallback`` (score, select and mask at a given epoch, zeros
held while training goes on). The submodules import without their library; creating a
callback then raises an ``ImportError`` naming the extra to install. Guide:
``docs/integrations.md``.

Example:
    >>> from prunekit.integrations import lightning, huggingface
    >>> sorted(lightning.__all__), sorted(huggingface.__all__)
    (['CTFCallback', 'PruneCallback'], ['CTFCallback', 'ExtraLossMixin', 'PruneCallback', 'PrunekitTrainer'])
"""
