"""Quantization: block formats that other tools read (ggml), and later the methods that fill them."""
