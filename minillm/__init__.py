"""minillm: a small language-model engine written from scratch."""
