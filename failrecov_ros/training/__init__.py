"""Trainers for our own models."""
