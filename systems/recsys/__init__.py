"""Real-time e-commerce recommendations: two-tower + content + popularity candidates, attention ranker,
Feast features, Kafka browse events, FastAPI serving and an A/B experiment. See README.md."""
