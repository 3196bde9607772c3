"""Monitoring: consumes the shared prediction and label records and computes drift, performance and alerts.

Drift is computed from mergeable per-window summaries (``drift.py``), so a window, a day or a rolling
reference is a merge of summaries that consumers built independently, never a re-scan of raw rows.
"""
