"""Measuring models: roost bench, roost eval (eval sets, perplexity, golden outputs) and the results kept."""
