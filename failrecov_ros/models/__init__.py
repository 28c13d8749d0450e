"""Diagnosis model backends behind one interface."""
