"""The translation application: model, data, tokenizers, training, search, CLIs."""
