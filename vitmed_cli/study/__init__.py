"""A study: its file, its matrix of cells, and the executors that run them."""
