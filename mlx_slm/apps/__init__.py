"""Applications built on the engine: generate, chat, compare, quiz, quality, quantize, info."""
