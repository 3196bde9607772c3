"""Real-time e-commerce recommendations: tuned peers (popularity … EASE, ALS/BPR, SASRec) and a LightGBM ranker
over their candidates, a validation gate that picks which one is served, the registered champion behind FastAPI,
each shopper's live session from Kafka browse events through Feast, and an A/B experiment. See README.md."""
