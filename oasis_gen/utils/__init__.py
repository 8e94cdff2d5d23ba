"""Small shared pieces: typed errors, atomic files, worker threads, picture tiling, config values."""
