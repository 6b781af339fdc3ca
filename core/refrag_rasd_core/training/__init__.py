"""Training code of the core: the REFRAG pipeline and the EAGLE draft head, with the data helpers they share.

* :mod:`.refrag`      ``refrag-rasd train-refrag`` (``python -m refrag_rasd_core.training.refrag``);
* :mod:`.eagle`       ``refrag-rasd train-draft`` (``python -m refrag_rasd_core.training.eagle``);
* :mod:`.spec_bench`  the Spec-Bench dev file and its training / held-out split (by parity);
* :mod:`.qa_split`    QA files' training / held-out split and top-k passage retrieval;
* :mod:`.seeds`       per-step random sources (a resumed run draws what an uninterrupted one would).

Both trainers import the shared modules, never each other; the runtime parts they train
(:mod:`refrag_rasd_core.refrag`, :mod:`refrag_rasd_core.eagle`) never import training code.

Example:
    >>> from refrag_rasd_core.training.seeds import step_rng
    >>> step_rng(0, "recon", 3).random() == step_rng(0, "recon", 3).random()
    True
"""
