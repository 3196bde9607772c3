"""Distributed training of a small GPT on CPU (gloo) and GPU (NCCL): DDP, parameter server, Ray Train."""
