"""The training loop: masked SGD for a phase, and evaluation."""
