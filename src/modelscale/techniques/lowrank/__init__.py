"""Low-rank factorization techniques (truncated SVD of Linear and Conv2d weights)."""
