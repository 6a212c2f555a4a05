"""Using a model: preprocessing, the predict CLI, summaries, features and folded eval."""
