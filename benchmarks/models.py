"""Model sizes the benchmarks share, as config overrides."""

# 14 x (4 x 768^2 + 3 x 768 x 2048) ~ 99M parameters without embeddings (~124M with a tied 32k x 768 vocabulary)
LLAMA100M = ["model=llama25m", "model.hidden_size=768", "model.num_layers=14", "model.num_heads=12",
             "model.intermediate_size=2048"]
