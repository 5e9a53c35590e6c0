"""Trained quantization (Deep Compression, Han, Mao and Dally 2016, sec. 3): the surviving weights of each layer
share a few values (k-means centroids), which are then fine-tuned; pure functions on tensors. Imports nothing of the
package."""
