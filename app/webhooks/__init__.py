"""Webhook actors: per-actor settings (`settings.py`) and outbound delivery."""
