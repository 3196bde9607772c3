"""The research-round answers: seeded experiments whose plots and numbers are the answer (see README.md)."""
