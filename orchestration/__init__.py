"""Dagster orchestration and the command line. Thin: assets call recipes and library functions."""
