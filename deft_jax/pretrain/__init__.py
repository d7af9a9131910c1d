"""Contrastive CLIP pretraining: a small real vision-language model for offline work."""
