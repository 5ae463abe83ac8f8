"""Workflows that join stages (data + model + evaluator + analysis): what the CLI and notebooks call."""
