"""Observables, diagnostics, plots and the report."""
