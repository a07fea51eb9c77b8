"""`mlx-slm serve`: an OpenAI-compatible HTTP server with continuous batching.

http.py (Starlette routes) parses and answers; worker.py (one thread) owns the models and
decodes every running request together; protocol.py turns JSON into checked parameters.
"""
