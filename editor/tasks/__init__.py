"""Tasks: prompt sets with gold answers, built in code from a seed or loaded from local files."""
