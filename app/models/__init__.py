"""Models: the catalog, GGUF headers, Hub downloads, the local store, what runs here, MLX folders."""
