"""Weight sharing by clustering: k-means codebooks with packed indices (Deep Compression)."""
