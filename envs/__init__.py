"""Gymnasium environments rendered for VLM rewards."""
