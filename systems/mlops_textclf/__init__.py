"""MLOps pipeline for a continuously trained text classifier.

Stages so far: ``ingest`` (a corpus cut into ordered data batches and a fixed golden test set; a dataset that
grows by immutable, content-addressed versions) and ``validate`` (the gate a batch passes before it may join,
with quarantine and re-submission). ``cli.py`` is ``mlsd textclf``.
"""
