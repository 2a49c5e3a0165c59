"""Tiny random-init twins of the audio-language model families, each written in its release's checkpoint
layout so `ambig.model.load` reads it through the same `from_pretrained` path as the real weights."""
